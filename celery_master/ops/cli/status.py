"""Read-only commands: ``status`` (with ``--check`` for monitoring) and ``history``.

They never create tables and say so when the tables do not exist yet.
``status --check`` exit codes: see :mod:`celery_master.ops.probe`.
"""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from ...errors import ConfigurationError
from ...holder import Holder
from ...identity import app_identity
from ...jobs.beat.job import beat_settings
from ...settings import resolve_job_settings
from ...store.engine import create_lease_engine, mask_url
from ...store.leases import Lease, LeaseStore
from ...worker.registry import jobs_of
from .. import probe
from .group import (
    NO_TABLES,
    database_url,
    first_line,
    has_tables,
    lock_arg,
    master,
    open_store,
    say,
    stamp,
    table,
)

__all__ = ["history", "status"]


def _apps_by_lock(store: LeaseStore) -> dict[str, list[str]]:
    """App identities of the live workers that run each lock name."""
    apps: dict[str, set[str]] = {}
    for member in store.members():
        for name in member.locks:
            apps.setdefault(name, set()).add(member.app)
    return {name: sorted(found) for name, found in apps.items()}


def _row(lease: Lease, apps: list[str]) -> dict[str, Any]:
    left = probe.lease_left(lease)
    age = probe.progress_age(lease)
    return {
        "lock_name": lease.lock_name,
        "enabled": lease.enabled,
        "holder": lease.holder,
        "node": Holder.node_of(lease.holder),
        "epoch": lease.epoch,
        "lease_left": None if left is None else round(left, 2),
        "since": stamp(lease.acquired_at) if lease.holder else None,
        "progress_age": None if age is None else round(age, 2),
        "progress_within": lease.progress_within,
        "release_requested": lease.release_requested,
        "changed_by": lease.changed_by,
        "changed_at": stamp(lease.changed_at),
        "reason": lease.reason,
        "apps": apps,
    }


def _app_locks(app: Any) -> dict[str, float]:
    """This app's lock names (registered, plus HA beat's when on) -> heartbeat interval."""
    try:
        locks = {
            job.lock_name: resolve_job_settings(app.conf, job.options).heartbeat_interval
            for job in jobs_of(app)
        }
        beat_on, beat_lock = beat_settings(app.conf, identity=app_identity(app))
        if beat_on:
            locks[beat_lock] = resolve_job_settings(app.conf, {}).heartbeat_interval
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    return locks


def _check(ctx: click.Context, names: list[str], every: bool) -> None:
    """Exit 0/1/2/3 (see celery_master.ops.probe), one line per problem."""
    app = ctx.obj.app
    locks = _app_locks(app)
    url = database_url(ctx)
    try:
        store = LeaseStore(create_lease_engine(url, timeout=5.0))
        store.read_schema_version()  # a schema_version that is not one: unreadable (3)
        leases = store.read() if has_tables(store) else {}
    except (SQLAlchemyError, ConfigurationError) as exc:
        finding = probe.Finding(
            None, probe.UNREADABLE, f"lease database {mask_url(url)}: {first_line(exc, url)}"
        )
        say(finding.line())
        ctx.exit(probe.UNREADABLE)
    wanted = set(names) or set(locks)
    if every:
        wanted |= set(leases)
    if not wanted:
        say("UNKNOWN: this app has no master job and no lock name was named")
        ctx.exit(probe.UNREADABLE)
    renewal = resolve_job_settings(app.conf, {}).heartbeat_interval
    findings = probe.judge_all(wanted, leases, {n: locks.get(n, renewal) for n in wanted})
    for finding in findings:
        say(finding.line())
    if not findings:
        say(f"OK: {len(wanted)} lock name(s) have a live master")
    ctx.exit(probe.exit_code(findings))


@master.command()
@click.argument("lock_names", nargs=-1)
@click.option("--check", is_flag=True, help="Exit 0 ok, 1 disabled, 2 no live master, 3 no DB.")
@click.option("--all", "every", is_flag=True, help="With --check: every lock name in the DB.")
@click.option("-j", "--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(
    ctx: click.Context, lock_names: tuple[str, ...], check: bool, every: bool, as_json: bool
) -> None:
    """Every lock name: enabled, master, epoch, lease left, since, job progress."""
    names = [lock_arg(n) for n in lock_names]
    if check:
        _check(ctx, names, every)
        return
    store = open_store(ctx, create=False)
    if not has_tables(store):
        raise click.ClickException(NO_TABLES.format(url=mask_url(store.engine.url)))
    leases = store.read()
    unknown = [n for n in names if n not in leases]
    if unknown:
        raise click.ClickException(
            f"unknown lock name(s) {', '.join(map(repr, unknown))}: known are "
            f"{', '.join(sorted(leases)) or 'none'}"
        )
    apps = _apps_by_lock(store)
    shown = sorted(set(names) or set(leases))
    rows = [_row(leases[n], apps.get(n, [])) for n in shown]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        age, within = row["progress_age"], row["progress_within"]
        row["progress"] = (
            None if age is None else f"{age:.1f}s ago" + (f" (due {within:g}s)" if within else "")
        )
    say(f"lease database: {mask_url(store.engine.url)}")
    click.echo(
        table(
            rows,
            [
                ("lock_name", "LOCK NAME"),
                ("enabled", "ENABLED"),
                ("node", "MASTER"),
                ("epoch", "EPOCH"),
                ("lease_left", "LEASE LEFT"),
                ("since", "SINCE"),
                ("progress", "PROGRESS"),
                ("reason", "REASON"),
            ],
        )
    )
    for row in rows:
        if len(row["apps"]) > 1:
            say(
                f"warning: {row['lock_name']!r} is registered by several apps "
                f"({', '.join(row['apps'])}): lock names are global in the database",
                err=True,
            )


@master.command()
@click.argument("lock_name")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("-j", "--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def history(ctx: click.Context, lock_name: str, limit: int, as_json: bool) -> None:
    """Elections, hand-overs, self-stoppages, disables of LOCK_NAME, newest first."""
    store = open_store(ctx, create=False)
    if not has_tables(store):
        raise click.ClickException(NO_TABLES.format(url=mask_url(store.engine.url)))
    rows = store.history(lock_arg(lock_name), limit)
    for row in rows:
        row["at"] = stamp(row["at"])  # type: ignore[arg-type]
        row["node"] = Holder.node_of(row["holder"])  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        table(
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
