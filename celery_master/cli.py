"""``celery -A APP master status|enable|disable|release|history``: SQL first, then a hint.

Works with no worker running: the state lives in the lease database. When a
broker is reachable the command also broadcasts a hint so workers act at once.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from .control import broadcast_hint, validate_reason
from .errors import ConfigurationError
from .holder import Holder
from .job import validate_lock_name
from .settings import resolve_database_url
from .store.engine import create_lease_engine, mask_url
from .store.leases import Lease, LeaseStore

__all__ = ["master"]


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()} (celery master)"


def _store(ctx: click.Context) -> LeaseStore:
    app = ctx.obj.app
    try:
        url = resolve_database_url(app.conf)
        store = LeaseStore(create_lease_engine(url, timeout=5.0))
        store.ensure_schema()
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    except SQLAlchemyError as exc:
        first = str(exc.orig if hasattr(exc, "orig") else exc).splitlines()[0]
        raise click.ClickException(f"lease database {mask_url(url)} unreachable: {first}") from None
    return store


def _lock(name: str) -> str:
    try:
        return validate_lock_name(name)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


def _stamp(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value)) + "Z"


def _row(lease: Lease) -> dict[str, Any]:
    left = lease.lease_left
    return {
        "lock_name": lease.lock_name,
        "enabled": lease.enabled,
        "holder": lease.holder,
        "node": Holder.node_of(lease.holder),
        "epoch": lease.epoch,
        "lease_left": None if left is None else round(left, 2),
        "since": _stamp(lease.acquired_at) if lease.holder else None,
        "release_requested": lease.release_requested,
        "changed_by": lease.changed_by,
        "reason": lease.reason,
    }


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    cells = [[h for _, h in columns]] + [
        ["-" if r[k] is None else str(r[k]) for k, _ in columns] for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _hint(ctx: click.Context, lock_name: str) -> None:
    try:
        broadcast_hint(ctx.obj.app, [lock_name])
    except Exception as exc:  # the change is in SQL; workers see it at their next interval
        click.echo(
            f"note: no hint sent ({exc}); workers see the change within an interval", err=True
        )


@click.group(name="master")
@click.pass_context
def master(ctx: click.Context) -> None:
    """See and steer celery-master jobs (reads and writes the lease database)."""


@master.command()
@click.argument("lock_name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, lock_name: str | None, as_json: bool) -> None:
    """Every lock name: enabled, holder, epoch, lease left, since."""
    store = _store(ctx)
    leases = store.read([_lock(lock_name)] if lock_name else None)
    if lock_name and lock_name not in leases:
        raise click.ClickException(f"unknown lock name {lock_name!r}: known are {sorted(leases)}")
    rows = [_row(lease) for _, lease in sorted(leases.items())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"lease database: {mask_url(store.engine.url)}")
    click.echo(
        _table(
            rows,
            [
                ("lock_name", "LOCK NAME"),
                ("enabled", "ENABLED"),
                ("node", "MASTER"),
                ("epoch", "EPOCH"),
                ("lease_left", "LEASE LEFT"),
                ("since", "SINCE"),
                ("reason", "REASON"),
            ],
        )
    )


def _set_enabled(ctx: click.Context, lock_name: str, enabled: bool, reason: str | None) -> None:
    name = _lock(lock_name)
    store = _store(ctx)
    known = name in store.read([name])
    changed, lease = store.set_enabled(name, enabled, _who(), reason)
    word = "enabled" if enabled else "disabled"
    if not known:
        click.echo(
            f"warning: {name!r} was unknown to the database; the state is persisted", err=True
        )
    click.echo(f"{name}: {word}" + ("" if changed else " (already)"))
    _hint(ctx, name)


@master.command()
@click.argument("lock_name")
@click.pass_context
def enable(ctx: click.Context, lock_name: str) -> None:
    """Let workers become master of LOCK_NAME again."""
    _set_enabled(ctx, lock_name, True, None)


@master.command()
@click.argument("lock_name")
@click.option("--reason", default=None, help="Why (kept in the history).")
@click.pass_context
def disable(ctx: click.Context, lock_name: str, reason: str | None) -> None:
    """Stop the master job of LOCK_NAME everywhere, until enabled (survives restarts)."""
    try:
        why = validate_reason(reason)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    _set_enabled(ctx, lock_name, False, why)


@master.command()
@click.argument("lock_name")
@click.pass_context
def release(ctx: click.Context, lock_name: str) -> None:
    """Ask the master of LOCK_NAME to step down; another worker takes over at once."""
    name = _lock(lock_name)
    store = _store(ctx)
    changed, lease = store.request_release(name, _who())
    if lease is None:
        raise click.ClickException(f"unknown lock name {name!r}")
    if lease.holder is None:
        raise click.ClickException(f"{name!r} has no master to release")
    click.echo(
        f"{name}: release requested from {Holder.node_of(lease.holder)}"
        + ("" if changed else " (already)")
    )
    _hint(ctx, name)


@master.command()
@click.argument("lock_name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def history(ctx: click.Context, lock_name: str, limit: int, as_json: bool) -> None:
    """Elections, hand-overs, self-stoppages, disables of LOCK_NAME, newest first."""
    rows = _store(ctx).history(_lock(lock_name), limit)
    for row in rows:
        row["at"] = _stamp(row["at"])  # type: ignore[arg-type]
        row["node"] = Holder.node_of(row["holder"])  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        _table(
            rows,
            [
                ("at", "AT"),
                ("event", "EVENT"),
                ("node", "BY"),
                ("epoch", "EPOCH"),
                ("detail", "DETAIL"),
            ],
        )
    )
