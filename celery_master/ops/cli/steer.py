"""Commands that steer: ``enable``, ``disable [--wait]``, ``release [--wait]``, ``forget``.

SQL first (conditional, with who), then a hint. Only the holder ever ends its
own lease: these commands set flags and, with ``--wait``, watch the lease row
until the workers have acted.
"""

from __future__ import annotations

import click

from ...errors import ConfigurationError
from ...holder import Holder
from ...store.engine import mask_url
from ...worker.control import validate_reason
from ..watch import silent_for_a_ttl, wait_for_new_holder, wait_until_stopped
from .group import NO_TABLES, has_tables, hint, lock_arg, master, open_store, say, who

__all__ = ["disable", "enable", "forget", "release"]


def set_enabled(ctx: click.Context, lock_name: str, enabled: bool, reason: str | None) -> None:
    name = lock_arg(lock_name)
    store = open_store(ctx)
    known = name in store.read([name])
    changed, _lease = store.set_enabled(name, enabled, who(), reason)
    word = "enabled" if enabled else "disabled"
    if not known:
        say(f"warning: {name!r} was unknown to the database; the state is persisted", err=True)
    say(f"{name}: {word}" + ("" if changed else " (already)"))
    hint(ctx, name)


@master.command()
@click.argument("lock_name")
@click.pass_context
def enable(ctx: click.Context, lock_name: str) -> None:
    """Let workers become master of LOCK_NAME again."""
    set_enabled(ctx, lock_name, True, None)


@master.command()
@click.argument("lock_name")
@click.option("--reason", default=None, help="Why (kept in the history).")
@click.option("--wait", is_flag=True, help="Return once no worker runs the job.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1))
@click.pass_context
def disable(
    ctx: click.Context, lock_name: str, reason: str | None, wait: bool, timeout: float
) -> None:
    """Stop the master job of LOCK_NAME everywhere, until enabled (survives restarts)."""
    try:
        why = validate_reason(reason)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    set_enabled(ctx, lock_name, False, why)
    if not wait:
        return
    seen = wait_until_stopped(open_store(ctx, create=False), lock_name, timeout)
    lease = seen.lease
    if not seen.done:
        raise click.ClickException(
            f"{lock_name}: {seen.node} still runs it after {seen.seconds:.1f}s"
        )
    how = "its silent holder's lease expired" if lease and lease.holder else "its master stopped"
    say(f"{lock_name}: no worker runs it ({how}, {seen.seconds:.2f}s)")


@master.command()
@click.argument("lock_name")
@click.option("--wait", is_flag=True, help="Return once another worker holds the lock.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1))
@click.pass_context
def release(ctx: click.Context, lock_name: str, wait: bool, timeout: float) -> None:
    """Ask the master of LOCK_NAME to step down; another worker takes over at once."""
    name = lock_arg(lock_name)
    store = open_store(ctx)
    before = store.read([name]).get(name)
    if before is None:
        known = ", ".join(sorted(store.read())) or "none"
        raise click.ClickException(f"unknown lock name {name!r}: known are {known}")
    if before.holder is None:
        raise click.ClickException(f"{name!r} has no master to release")
    if wait:
        others = sorted(
            m.node for m in store.members() if name in m.locks and m.holder != before.holder
        )
        if not others:
            raise click.ClickException(
                f"no other live worker runs {name!r}: nobody would take over from "
                f"{Holder.node_of(before.holder)} (start another worker that registers it, "
                "or release without --wait)"
            )
    # only the term seen above: a release never reaches the next master by accident
    changed, _lease = store.request_release(name, who(), holder=before.holder, epoch=before.epoch)
    old = Holder.node_of(before.holder)
    say(f"{name}: release requested from {old}" + ("" if changed else " (already)"))
    hint(ctx, name)
    if not wait:
        return
    seen = wait_for_new_holder(store, name, before.holder, timeout)
    if not seen.done:
        now = f"still {seen.node}" if seen.lease and seen.lease.holder else "no master"
        raise click.ClickException(f"{name}: no other worker took over in {timeout:g}s ({now})")
    epoch = seen.lease.epoch if seen.lease else "?"
    say(f"{name}: {seen.node} is master (epoch {epoch}) after {seen.seconds:.2f}s")


@master.command()
@click.argument("lock_name")
@click.pass_context
def forget(ctx: click.Context, lock_name: str) -> None:
    """Remove the row of a lock name no live worker runs any more (its history stays)."""
    name = lock_arg(lock_name)
    store = open_store(ctx, create=False)
    if not has_tables(store):
        raise click.ClickException(NO_TABLES.format(url=mask_url(store.engine.url)))
    lease = store.read([name]).get(name)
    if lease is None:
        known = ", ".join(sorted(store.read())) or "none"
        raise click.ClickException(f"unknown lock name {name!r}: known are {known}")
    seen = None
    if lease.holder:  # a live holder renews within its ttl; a dead one's lease stays put
        say(
            f"{name!r} is held by {Holder.node_of(lease.holder)}: watching it for its ttl "
            f"({lease.ttl or 0:.1f}s) to see whether that worker is still alive"
        )
        seen = silent_for_a_ttl(store, lease)
        if seen is None:
            raise click.ClickException(
                f"{name!r} is held by a live worker: remove its job from the workers (or "
                "`celery master disable --wait` it) before forgetting it"
            )
    live = store.members(window=3 * (lease.ttl or 4.0))  # as the elector judges liveness
    runners = sorted(m.node for m in live if name in m.locks)
    if runners:
        raise click.ClickException(
            f"live workers still run {name!r}: {', '.join(runners)}; remove the job from "
            "their code and restart them first"
        )
    if not store.forget(name, who(), seen):
        raise click.ClickException(f"{name!r} was taken meanwhile; nothing removed")
    say(f"{name}: forgotten (its history stays; a worker that registers it recreates it)")
