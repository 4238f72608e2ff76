"""Epoch floors: a lock name's epoch never goes back, even when its row is deleted.

``forget`` removes a lease row; the next worker that registers the name
re-creates it. Started at 0, its epochs would repeat ones already handed out,
and a stale writer's ``WHERE epoch <= :epoch`` would pass. So deleting a row
first records its epoch as the name's floor in ``meta`` (under a hash of the
name: lock names are longer than meta's keys), and a re-created row starts
from its floor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import Connection, select

from .tables import META

__all__ = ["floor_key", "raise_floor", "read_floors"]


def floor_key(lock_name: str) -> str:
    return "epoch-floor:" + hashlib.sha256(lock_name.encode()).hexdigest()[:40]


def read_floors(conn: Connection, lock_names: Iterable[str]) -> dict[str, int]:
    keys = {floor_key(n): n for n in lock_names}
    if not keys:
        return {}
    rows = conn.execute(select(META.c.key, META.c.value).where(META.c.key.in_(list(keys))))
    return {keys[k]: int(v) for k, v in rows}


def raise_floor(conn: Connection, lock_name: str, epoch: int) -> None:
    """Make the floor at least ``epoch`` (monotone: a lower value never replaces a higher)."""
    key = floor_key(lock_name)
    current = read_floors(conn, [lock_name]).get(lock_name)
    if current is None:
        conn.execute(META.insert().values(key=key, value=str(epoch)))
    elif current < epoch:
        conn.execute(
            META.update()
            .where(META.c.key == key, META.c.value == str(current))
            .values(value=str(epoch))
        )
