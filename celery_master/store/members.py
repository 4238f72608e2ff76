"""Membership: which worker instances are alive, which app each belongs to, what it runs.

Used by the spread only (who tries first), never for safety, so liveness by
database time is fine here. Every worker of every app on the database has a
row; the spread of a lock name counts only the members that run it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.sql import ColumnElement

from .rows import Member, MemberBeat
from .tables import MEMBER

__all__ = ["beat_member", "decode_locks", "leave_member", "read_members"]


def decode_locks(raw: str | None) -> dict[str, int]:
    """The ``locks`` column; a row written by an older version has none."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)}


def _member(row: Any) -> Member:
    return Member(
        row.holder, row.node, row.held, row.app or "", decode_locks(row.locks), row.seen_at
    )


def read_members(conn: Connection, now: ColumnElement[float], window: float | None) -> list[Member]:
    stmt = select(MEMBER)
    if window is not None:
        stmt = stmt.where(MEMBER.c.seen_at > now - window)
    return [_member(r) for r in conn.execute(stmt.order_by(MEMBER.c.node, MEMBER.c.holder))]


def beat_member(
    conn: Connection, now: ColumnElement[float], insert: Any, beat: MemberBeat
) -> list[Member]:
    """Upsert this worker's row and return the live members (one statement each)."""
    locks = json.dumps(dict(sorted(beat.locks.items())), separators=(",", ":"))
    values: Mapping[str, Any] = {"held": beat.held, "seen_at": now, "app": beat.app, "locks": locks}
    conn.execute(
        insert(MEMBER)
        .values(holder=beat.holder, node=beat.node, **values)
        .on_conflict_do_update(index_elements=[MEMBER.c.holder], set_=dict(values))
    )
    members = read_members(conn, now, beat.window)
    if beat.prune:  # rows of crashed workers; now and then is enough
        conn.execute(MEMBER.delete().where(MEMBER.c.seen_at < now - 10 * beat.window))
    return members


def leave_member(conn: Connection, holder: str) -> None:
    conn.execute(MEMBER.delete().where(MEMBER.c.holder == holder))
