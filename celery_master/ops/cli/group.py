"""The ``celery master`` click group and what its commands share: store, names, output.

Database errors after connecting are one line naming the (masked) database,
never a traceback; read-only commands open the store without creating tables.
"""

from __future__ import annotations

import getpass
import socket
import time
from typing import Any

import click
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from ... import health
from ...errors import ConfigurationError
from ...jobs.job import validate_lock_name
from ...redact import url_secrets
from ...settings import resolve_database_url
from ...store.engine import create_lease_engine, mask_url
from ...store.leases import LEASE, LeaseStore
from ...store.setup import SchemaError
from ...worker.control import broadcast_hint
from ..printable import printable

__all__ = [
    "NO_TABLES",
    "database_url",
    "first_line",
    "has_tables",
    "hint",
    "lock_arg",
    "master",
    "open_store",
    "say",
    "stamp",
    "table",
    "who",
]

NO_TABLES = (
    "the celery-master tables do not exist yet in {url}: `celery master migrate` (or the "
    "first worker with a master job, where its database role may) creates them"
)


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()} (celery master)"


def first_line(exc: BaseException, url: str) -> str:
    """A database error in one line, without the secrets of the database ``url``."""
    return health.first_line(exc, url_secrets(url), limit=300)


def database_url(ctx: click.Context) -> str:
    try:
        return resolve_database_url(ctx.obj.app.conf)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


def open_store(ctx: click.Context, create: bool = True) -> LeaseStore:
    """The lease store; ``create=False`` for read-only commands (never creates tables).

    A schema this command cannot use is one line and exit 1, like a database error.
    """
    url = database_url(ctx)
    try:
        store = LeaseStore(create_lease_engine(url, timeout=5.0))
        if create:
            store.ensure_schema()
        else:
            store.read_schema_version()
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"lease database {mask_url(url)} unreachable: {first_line(exc, url)}"
        ) from None
    return store


def has_tables(store: LeaseStore) -> bool:
    with store.engine.connect() as conn:
        return bool(sa_inspect(conn).has_table(LEASE.name))


def lock_arg(name: str) -> str:
    try:
        return validate_lock_name(name)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def stamp(value: float | None) -> str | None:
    """ISO-8601 UTC, the format ``inspect master_status`` uses."""
    if value is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """Stored text escaped (see printable): one row, one line."""
    cells = [[h for _, h in columns]] + [
        ["-" if r[k] is None else printable(r[k]) for k, _ in columns] for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def say(line: str, err: bool = False) -> None:
    """Print one line; stored text in it is escaped, so it stays one line (see printable)."""
    click.echo(printable(line), err=err)


def hint(ctx: click.Context, lock_name: str) -> None:
    try:
        broadcast_hint(ctx.obj.app, [lock_name])
    except Exception as exc:  # the change is in SQL; workers see it at their next interval
        say(f"note: no hint sent ({exc}); workers see the change within an interval", err=True)


class _MasterGroup(click.Group):
    """Database errors after connecting are one line naming the (masked) database; every
    error message is escaped (it may quote stored text)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = printable(exc.message)  # type: ignore[misc]  # Final in typing only
            raise
        except SQLAlchemyError as exc:
            url = resolve_database_url(ctx.obj.app.conf)
            down = isinstance(exc, OperationalError | InterfaceError)
            state = "unreachable" if down else "failed"
            raise click.ClickException(
                f"lease database {mask_url(url)} {state}: {first_line(exc, url)}"
            ) from None


@click.group(name="master", cls=_MasterGroup)
@click.pass_context
def master(ctx: click.Context) -> None:
    """See and steer celery-master jobs (reads and writes the lease database)."""
