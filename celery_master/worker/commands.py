"""What a ``mastercontrol`` command does to the lease database: one command, one effect.

A command is judged at its receipt and its statement is conditional on that
moment: it may not change a lock that changed after the command was received
(measured on this worker's monotonic clock, so no sender's clock is trusted).
The statement runs on the worker's control thread with a bounded wait; when
the wait runs out the reply says the outcome is not known yet and how to
look, and a statement that still runs afterwards cannot undo a newer change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from celery.worker.control import nok, ok
from sqlalchemy.exc import SQLAlchemyError

from .. import clock
from ..store.leases import LeaseStore

__all__ = ["SQL_WAIT", "Apply", "enabled_command", "release_command", "submit"]

SQL_WAIT = 2.0  # at most; a broadcast's own expiry may leave less (its sender stops listening)
Apply = Callable[[LeaseStore, str], dict[str, Any]]


def release_command(
    name: str, who: str, epoch: int, received: float, now: Callable[[], float] = clock.now
) -> Apply:
    """Ask this worker's own term (the one held at receipt) to step down."""

    def apply(store: LeaseStore, holder: str) -> dict[str, Any]:
        ago = now() - received
        changed, lease = store.request_release(name, who, ago, holder=holder, epoch=epoch)
        if not changed:
            return ok(
                {
                    "lock_name": name,
                    "release_requested": bool(lease and lease.release_requested),
                    "by_this_call": False,
                    "detail": "already requested, or this worker's term ended meanwhile",
                }
            )
        return ok(
            {"lock_name": name, "release_requested": True, "by_this_call": True, "holder": holder}
        )

    return apply


def enabled_command(
    known: Collection[str],
    name: str,
    enable: bool,
    who: str,
    why: str | None,
    received: float,
    now: Callable[[], float] = clock.now,
) -> Apply:
    """Enable or disable ``name``, unless it changed after the command was received.

    ``received`` and ``now`` are on this worker's monotonic clock.
    """
    action = "enable" if enable else "disable"

    def apply(store: LeaseStore, holder: str) -> dict[str, Any]:
        if name not in known and name not in store.read([name]):
            # a broadcast never creates a row: anyone on the broker could fill the table
            return nok(
                f"unknown lock name {name!r}: known are {sorted(known)} (the lease database "
                f"has no row for it either; `celery master {action} {name}` records a lock "
                "name no worker runs yet)"
            )
        ago = now() - received
        changed, lease = store.set_enabled(name, enable, who, why, ago)
        if not changed and lease.enabled != enable:
            return nok(f"{action} of {name!r} not applied: the lock changed after it was received")
        reply: dict[str, Any] = {
            "lock_name": name,
            "enabled": lease.enabled,
            "by_this_call": changed,
            "reason": lease.reason,
        }
        if name not in known:
            reply["warning"] = f"no worker here registers {name!r}; the state is persisted"
        return ok(reply)

    return apply


def submit(
    elector: Any, offload: Any, broadcasts: Any, name: str, apply: Apply, wait: float
) -> dict[str, Any]:
    """Hand ``apply`` to the worker's control thread; one command pending per worker."""
    holder = elector.holder_id
    if broadcasts is not None:
        with broadcasts.lock:
            pending = broadcasts.pending
            if pending is not None and not pending.done():
                return nok(
                    "refused: an earlier mastercontrol command still waits for the lease "
                    "database on this worker; retry when it has answered"
                )
            future = broadcasts.pending = offload.submit(lambda store: apply(store, holder))
    else:
        future = offload.submit(lambda store: apply(store, holder))
    try:
        reply: dict[str, Any] = future.result(timeout=max(0.0, wait))
    except FutureTimeout:
        return nok(
            f"outcome not known yet: the lease database has not answered within {wait:.1f}s; "
            "the command may still apply, but never over a change made after it was "
            f"received: check with `celery master status {name}`"
        )
    except SQLAlchemyError as exc:
        return nok(f"not applied: the lease database failed ({type(exc).__name__}); retry later")
    if "ok" in reply:
        elector.wake([name])
    return reply
