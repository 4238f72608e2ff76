"""Engine creation with per-dialect timeouts.

A holder paused or hung in the middle of a statement must never block the
other workers' election for longer than a heartbeat interval: PostgreSQL gets
server-side statement, lock and idle-in-transaction timeouts plus a TCP user
timeout; SQLite gets a busy timeout and WAL mode (readers never wait).
"""

from __future__ import annotations

import enum
import math
import os
import weakref
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError
from ..redact import mask_url, redact, url_secrets, userinfo

__all__ = ["Dialect", "create_lease_engine", "mask_url", "parse_url", "sqlite_path"]


class Dialect(enum.Enum):
    POSTGRESQL = "postgresql"
    SQLITE = "sqlite"


def parse_url(url: str | URL) -> URL:
    """Parse a lease database URL; a bad one gets a message naming the setting.

    The parser's own message is passed on without the URL's secrets (SQLAlchemy
    2.0.0-2.0.40 repeat the whole URL in it). A userinfo with an unencoded
    ``@`` is refused before parsing: SQLAlchemy splits at the first ``@`` and
    would take the tail of the password for the host, and every driver error
    would show it.
    """
    written = userinfo(url) if isinstance(url, str) else None
    if written is not None and "@" in written.partition(":")[2]:
        raise ConfigurationError(
            f"master_database_url {mask_url(url)!r} has an unencoded '@' in its password, "
            "which would be read as the start of the host: percent-encode it as %40"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"master_database_url {mask_url(str(url))!r} is not a database URL "
            f"({redact(str(exc), url_secrets(str(url)))}): "
            "use e.g. postgresql+psycopg2://user:pw@host/db or sqlite:////abs/path.sqlite3"
        ) from None
    dialect_of(parsed)
    return parsed


def dialect_of(url: URL) -> Dialect:
    try:
        return Dialect(url.get_backend_name())
    except ValueError:
        supported = ", ".join(d.value for d in Dialect)
        raise ConfigurationError(
            f"master_database_url uses {url.get_backend_name()!r}, which celery-master "
            f"does not support: use one of {supported}"
        ) from None


def sqlite_path(url: str | URL) -> Path | None:
    """Absolute path of an SQLite file URL (None for other dialects or memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database).resolve()


#: PostgreSQL drivers built on libpq: they take the server-side timeouts as connect options
LIBPQ_DRIVERS = ("psycopg2", "psycopg")


def create_lease_engine(url: str | URL, timeout: float = 1.0) -> Engine:
    """One small pool per process; every statement bounded by ``timeout`` seconds.

    psycopg2 and psycopg (3) both hand ``connect_args`` to libpq as connection
    parameters, so both get the same server-side timeouts; a PostgreSQL driver
    that is not libpq-based would run without them, so it is refused.
    """
    parsed = parse_url(url)
    dialect = dialect_of(parsed)
    ms = max(100, int(timeout * 1000))
    if dialect is Dialect.POSTGRESQL:
        if parsed.get_driver_name() not in LIBPQ_DRIVERS:
            raise ConfigurationError(
                f"master_database_url uses the PostgreSQL driver {parsed.get_driver_name()!r}, "
                "which cannot carry the statement, lock and idle timeouts the election relies "
                "on: use postgresql+psycopg2:// or postgresql+psycopg://"
            )
        connect_args = {
            "connect_timeout": max(2, math.ceil(timeout)),
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms} "
            f"-c idle_in_transaction_session_timeout={max(ms * 2, 1000)}",
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(timeout)),
            "keepalives_interval": 1,
            "keepalives_count": 2,
            "tcp_user_timeout": ms * 2,
            "application_name": "celery-master",
        }
        engine = create_engine(
            parsed, pool_size=2, max_overflow=2, pool_timeout=timeout, connect_args=connect_args
        )
    else:
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, connect_args={"timeout": timeout, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_on_connect)
    _dispose_in_forked_children(engine)
    return engine


def _sqlite_on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _dispose_in_forked_children(engine: Engine) -> None:
    """A prefork child must never close the parent's pooled connection (SQLAlchemy's advice)."""
    ref = weakref.ref(engine)

    def after_in_child() -> None:
        eng = ref()
        if eng is not None:
            eng.dispose(close=False)

    os.register_at_fork(after_in_child=after_in_child)
