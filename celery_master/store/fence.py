"""Errors in a fenced transaction that the server ended on purpose, told as what they are.

A fenced transaction left idle longer than one heartbeat interval is ended by
the server (``idle_in_transaction_session_timeout``), so a paused master
cannot hold the fence. The job's next statement or commit then fails with a
bare "server closed the connection"; this turns that into ``NotMaster``
saying why and what to do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError

from ..errors import NotMaster

__all__ = ["explain_fence_errors"]

KEY = "celery_master_fence"


def explain_fence_errors(conn: Connection, lock_name: str, epoch: int, hold_ms: int) -> None:
    """Mark ``conn``'s transaction as fenced; errors until it ends are explained."""
    engine = conn.engine
    if not event.contains(engine, "handle_error", _explain):
        event.listen(engine, "handle_error", _explain)
        event.listen(engine, "commit", _forget)
        event.listen(engine, "rollback", _forget)
    conn.info[KEY] = (lock_name, epoch, hold_ms)


def _forget(conn: Connection) -> None:
    if not conn.invalidated:  # an invalidated connection's info is gone with it
        conn.info.pop(KEY, None)


def _explain(context: Any) -> None:
    conn = context.connection
    fenced = conn.info.get(KEY) if conn is not None else None
    error = context.sqlalchemy_exception
    if fenced is None or not isinstance(error, DBAPIError):
        return
    if not (error.connection_invalidated or "idle-in-transaction" in str(error)):
        return  # an error of the job's own statements: not ours to explain
    lock_name, epoch, hold_ms = fenced
    conn.info.pop(KEY, None)
    raise NotMaster(
        lock_name,
        epoch,
        f"the database ended this fenced transaction ({str(error.orig).strip().splitlines()[0]}): "
        f"a fenced transaction idle for {hold_ms} ms is ended by design, so that a paused "
        "master cannot hold the fence; keep fenced transactions short and busy",
    ) from error
