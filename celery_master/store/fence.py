"""The fence: a job's own write made conditional on its term, inside its own transaction.

A fenced transaction left idle longer than one heartbeat interval is ended by
the server (``idle_in_transaction_session_timeout``), so a paused master
cannot hold the fence. The job's next statement or commit then fails with a
bare "server closed the connection"; this turns that into ``NotMaster``
saying why and what to do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, event, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..errors import NotMaster
from ..health import first_line
from ..redact import url_secrets
from .engine import Dialect
from .tables import LEASE

__all__ = ["explain_fence_errors", "fence_term"]

KEY = "celery_master_fence"


def explain_fence_errors(conn: Connection, lock_name: str, epoch: int, hold_ms: int) -> None:
    """Mark ``conn``'s transaction as fenced; errors until it ends are explained."""
    engine = conn.engine
    if not event.contains(engine, "handle_error", _explain):
        event.listen(engine, "handle_error", _explain)
        event.listen(engine, "begin", _forget)
    conn.info[KEY] = (lock_name, epoch, hold_ms)


def _forget(conn: Connection) -> None:
    """A new transaction is not fenced. Kept until then, not dropped at commit: the commit
    itself is where a transaction the server ended fails, and that error is explained too."""
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
        f"the database ended this fenced transaction "
        f"({first_line(error, url_secrets(conn.engine.url))}): "
        f"a fenced transaction idle for {hold_ms} ms is ended by design, so that a paused "
        "master cannot hold the fence; keep fenced transactions short and busy",
    ) from error


def fence_term(
    conn: Connection,
    dialect: Dialect,
    lock_name: str,
    epoch: int,
    holder: str,
    hold_ms: int,
    busy_ms: int | None = None,
) -> bool:
    """True if (lock_name, epoch, holder) is current, held so until ``conn`` commits.

    PostgreSQL: ``FOR KEY SHARE`` makes a takeover (which locks the row FOR
    UPDATE) wait for the caller's transaction but never blocks the holder's
    own renewal; the transaction is bounded: idle for ``hold_ms`` it is ended
    by the server, each later statement by ``busy_ms``. SQLite has one
    writer: a no-op UPDATE takes the write lock, which also holds the
    holder's own renewal back, so fenced transactions there must be short.
    A fence that cannot be confirmed raises NotMaster.
    """
    cond = and_(LEASE.c.lock_name == lock_name, LEASE.c.epoch == epoch, LEASE.c.holder == holder)
    try:
        if dialect is Dialect.POSTGRESQL:
            explain_fence_errors(conn, lock_name, epoch, hold_ms)
            conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {hold_ms:d}"))
            conn.execute(text(f"SET LOCAL lock_timeout = {hold_ms:d}"))
            row = conn.execute(
                select(LEASE.c.epoch).where(cond).with_for_update(read=True, key_share=True)
            ).first()
            conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
            conn.execute(text(f"SET LOCAL statement_timeout = {busy_ms or hold_ms:d}"))
            return row is not None
        upd = LEASE.update().where(cond).values(epoch=LEASE.c.epoch)
        return conn.execute(upd).rowcount == 1
    except SQLAlchemyError as exc:
        reason = first_line(exc, url_secrets(conn.engine.url))
        why = f"the fence could not be confirmed: {reason}"
        raise NotMaster(lock_name, epoch, why) from exc
