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
TRIM_EVERY = 64  # a lock name is trimmed when one of its rows gets an id divisible by this

#: (lock name, event, holder or who, epoch, detail)
Event = tuple[str, str, "str | None", "int | None", "str | None"]


def record(conn: Connection, now: ColumnElement[float], events: Iterable[Event]) -> None:
    """Append ``events``; now and then keep only the newest KEEP_PER_LOCK rows of a lock name.

    Trimming at every event would cost a hand-over a statement; trimming when a
    row's id is a multiple of TRIM_EVERY bounds each name at about KEEP_PER_LOCK
    + TRIM_EVERY rows, and a name flooded with events is the one trimmed most.
    """
    rows = [
        {"lock_name": n, "event": ev, "holder": h, "epoch": e, "detail": d}
        for n, ev, h, e, d in events
    ]
    if not rows:
        return
    inserted = conn.execute(
        HISTORY.insert().values(at=now).returning(HISTORY.c.id, HISTORY.c.lock_name),
        rows,
    ).all()
    due = {name for row_id, name in inserted if row_id % TRIM_EVERY == 0}
    for name in due:
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
