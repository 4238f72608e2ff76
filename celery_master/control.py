"""Remote-control commands, registered when the app imports celery_master.

``celery -A APP control mastercontrol disable|enable|release|status [LOCK] [REASON]``
and ``celery -A APP inspect master_status [LOCK]``. Handlers run on the
worker's main loop: they validate, hand SQL to the elector's control thread
with a bounded wait, and reply in Celery's ``{"ok": ...}``/``{"error": ...}``
shape. State lives in SQL; a broadcast only makes workers react at once.
"""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from celery.worker.control import control_command, inspect_command, nok, ok
from sqlalchemy.exc import SQLAlchemyError

from .errors import ConfigurationError
from .job import validate_lock_name
from .store.leases import LeaseStore

__all__ = ["ACTIONS", "HINT_COMMAND", "MAX_REASON", "broadcast_hint", "validate_reason"]

logger = logging.getLogger("celery_master")
HINT_COMMAND = "master_hint"
ACTIONS = ("disable", "enable", "release", "status")
MAX_REASON = 500
SQL_WAIT = 2.0  # below the client's default_timeout below, so the reply arrives


def validate_reason(reason: object) -> str | None:
    if reason is None or reason == "":
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable():
        raise ConfigurationError(
            f"reason must be printable text of at most {MAX_REASON} characters"
        )
    return reason


def _elector(state: Any) -> Any:
    return getattr(state.consumer.controller, "master_elector", None)


@control_command(name=HINT_COMMAND, args=[("lock_names", str)], signature="[LOCK_NAMES]")
def master_hint(state: Any, lock_names: Any = None, **kwargs: Any) -> dict[str, Any]:
    """A lease was freed or changed somewhere: look at it now, not at the next check."""
    elector = _elector(state)
    if elector is not None:
        if isinstance(lock_names, str):
            lock_names = [n for n in lock_names.split(",") if n]
        elector.wake(lock_names or None)
    return ok("woken")


def _status(elector: Any, lock_name: str | None) -> dict[str, Any]:
    view = elector.snapshot()
    if lock_name is None:
        return ok(view)
    if lock_name not in view:
        return nok(f"unknown lock name {lock_name!r}: this worker knows {sorted(view)}")
    return ok({lock_name: view[lock_name]})


@inspect_command(name="master_status", args=[("lock_name", str)], signature="[LOCK]")
def master_status(state: Any, lock_name: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Each worker's view of its master jobs: role, epoch, holder, since, last error."""
    elector = _elector(state)
    if elector is None:
        return nok("celery-master is not running on this worker (no master job registered)")
    return _status(elector, lock_name)


@control_command(
    name="mastercontrol",
    args=[("action", str), ("lock_name", str), ("reason", str)],
    signature="disable|enable|release|status [LOCK] [REASON]",
    default_timeout=3.0,
)
def mastercontrol(
    state: Any,
    action: str | None = None,
    lock_name: str | None = None,
    reason: str | None = None,
    issued_at: float | None = None,
    who: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Disable, enable or release a master job cluster-wide (persisted in SQL), or show status."""
    elector = _elector(state)
    if elector is None:
        return nok("celery-master is not running on this worker (no master job registered)")
    if action not in ACTIONS:
        return nok(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if action == "status":
        return _status(elector, lock_name)
    try:
        name = validate_lock_name(lock_name)
        why = validate_reason(reason)
    except ConfigurationError as exc:
        return nok(str(exc))
    known = name in elector.locks
    who = who or "unknown (celery control)"

    def apply(store: LeaseStore) -> dict[str, Any]:
        if not known and name not in store.read([name]) and action != "disable":
            return nok(f"unknown lock name {name!r}: known are {sorted(elector.locks)}")
        if action == "release":
            changed, lease = store.request_release(name, who, issued_at)
            if lease is None or lease.holder is None:
                return nok(f"{name!r} has no master to release")
            return ok(
                {
                    "lock_name": name,
                    "release_requested": True,
                    "by_this_call": changed,
                    "holder": lease.holder,
                }
            )
        changed, lease = store.set_enabled(name, action == "enable", who, why, issued_at)
        if not changed and lease.enabled != (action == "enable"):
            return nok(f"stale {action} of {name!r} ignored: the lock changed after it was issued")
        reply: dict[str, Any] = {
            "lock_name": name,
            "enabled": lease.enabled,
            "by_this_call": changed,
            "reason": lease.reason,
        }
        if not known:
            reply["warning"] = f"no worker here registers {name!r}; the state is persisted"
        return ok(reply)

    try:
        reply = elector.submit(apply).result(timeout=SQL_WAIT)
    except FutureTimeout:
        return nok(f"the lease database did not answer within {SQL_WAIT:.0f}s; retry later")
    except SQLAlchemyError as exc:
        return nok(f"the lease database failed: {type(exc).__name__}; retry later")
    if "ok" in reply:
        elector.wake([name])
    return reply


def broadcast_hint(app: Any, lock_names: list[str]) -> None:
    """Send the hint on a connection of our own (the consumer's belongs to the main loop)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.1, interval_step=0.2)
            app.control.broadcast(
                HINT_COMMAND, arguments={"lock_names": lock_names}, connection=conn
            )
    except Exception as exc:  # broker down: standbys fall back to their check interval
        logger.warning("celery-master: hint not sent (%s)", exc)
