"""The history table: who took, freed, disabled or released a lock name, and when.

Rows are appended in the caller's transaction, so history never disagrees
with the lease row; it is trimmed per lock name, so a flood of events on one
name cannot erase the others' history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.sql import ColumnElement

from .tables import HISTORY

__all__ = ["KEEP_PER_LOCK", "Event", "read_history", "record"]

KEEP_PER_LOCK = 1000

#: (lock name, event, holder or who, epoch, detail)
Event = tuple[str, str, "str | None", "int | None", "str | None"]


def record(conn: Connection, now: ColumnElement[float], events: Iterable[Event]) -> None:
    """Append ``events``, then keep only the newest KEEP_PER_LOCK rows of each name written.

    Every write path goes through here (the election, operators, HA beat's
    takeovers), and each trims the names it wrote at once: a bound by count
    per name holds whatever the pattern of ids (two names that always hand
    over together land on alternate ids, which a trim keyed on the id would
    never reach for one of them), and a name's last write (``forgotten``)
    leaves it bounded too. A trim is one DELETE per name written, on the
    lock-name index.
    """
    rows = [
        {"lock_name": n, "event": ev, "holder": h, "epoch": e, "detail": d}
        for n, ev, h, e, d in events
    ]
    if not rows:
        return
    conn.execute(HISTORY.insert().values(at=now), rows)
    for name in dict.fromkeys(row["lock_name"] for row in rows):
        oldest_kept = (
            select(HISTORY.c.id)
            .where(HISTORY.c.lock_name == name)
            .order_by(HISTORY.c.id.desc())
            .offset(KEEP_PER_LOCK - 1)
            .limit(1)
            .scalar_subquery()
        )
        conn.execute(
            HISTORY.delete().where(HISTORY.c.lock_name == name, HISTORY.c.id < oldest_kept)
        )


def read_history(conn: Connection, lock_name: str, limit: int) -> list[dict[str, Any]]:
    stmt = (
        select(HISTORY)
        .where(HISTORY.c.lock_name == lock_name)
        .order_by(HISTORY.c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(stmt)]
