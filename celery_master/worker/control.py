"""Remote-control commands, registered when the app imports celery_master.

``celery -A APP control mastercontrol disable|enable|release|status [LOCK] [REASON]``
and ``celery -A APP inspect master_status [LOCK]``. Handlers run on the
worker's main loop: they validate, hand SQL to the elector's control thread
with a bounded wait, and reply in Celery's ``{"ok": ...}``/``{"error": ...}``
shape. State lives in SQL; a broadcast only makes workers react at once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.control import control_command, inspect_command, nok, ok

from .. import clock
from ..errors import ConfigurationError
from ..jobs.job import validate_lock_name
from .commands import SQL_WAIT, enabled_command, release_command, submit

__all__ = [
    "ACTIONS",
    "HINT_COMMAND",
    "MAX_REASON",
    "MAX_WHO",
    "broadcast_hint",
    "validate_reason",
    "validate_who",
]

logger = logging.getLogger(__name__)
HINT_COMMAND = "master_hint"
ACTIONS = ("disable", "enable", "release", "status")
MAX_REASON = 500
MAX_WHO = 255  # the changed_by and holder columns
UNKNOWN_WHO = "unknown (celery control)"


def _printable(value: object, what: str, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise ConfigurationError(f"{what} must be printable text of at most {limit} characters")
    return value


def validate_reason(reason: object) -> str | None:
    return _printable(reason, "reason", MAX_REASON)


def validate_who(who: object) -> str | None:
    """``who`` is stored and shown to operators: printable and bounded, like ``reason``."""
    return _printable(who, "who", MAX_WHO)


def _elector(state: Any) -> Any:
    return getattr(state.consumer.controller, "master_elector", None)


def _offload(state: Any) -> Any:
    return getattr(state.consumer.controller, "master_offload", None)


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
    try:  # a reply never echoes more than a valid lock name (anyone on the broker may ask)
        lock_name = validate_lock_name(lock_name)
    except ConfigurationError as exc:
        return nok(str(exc))
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
    who: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Disable, enable or release a master job cluster-wide (persisted in SQL), or show status.

    One operator command has one effect: a broadcast read after its kombu
    ``expires`` (plus the allowed clock skew) is refused (``celery master ...``
    is the exact path); its statement may not change a lock that changed
    after its receipt, however late it runs (commands.py); a ``release`` is
    acted on only by the worker holding the lock at receipt; while one
    command waits for the lease database the next is refused at once, so a
    storm never holds Celery's main loop for more than one wait. Nothing a
    sender writes into the arguments is trusted: an ``issued_at`` is ignored.
    """
    elector = _elector(state)
    if elector is None:
        return nok("celery-master is not running on this worker (no master job registered)")
    if action not in ACTIONS:
        return nok(f"unknown action {str(action)[:40]!r}: use one of {', '.join(ACTIONS)}")
    if action == "status":
        return _status(elector, lock_name)
    try:
        name = validate_lock_name(lock_name)
        why = validate_reason(reason)
        who = validate_who(who) or UNKNOWN_WHO
    except ConfigurationError as exc:
        return nok(str(exc))
    broadcasts = getattr(state.consumer, "master_broadcasts", None)
    late = broadcasts.expired_for() if broadcasts is not None else None
    received = broadcasts.received_at() if broadcasts is not None else clock.now()
    if late is not None:
        logger.info("refused a mastercontrol %s of %r read %.1fs late", action, name, late)
        return nok(
            f"refused: this {action} of {name!r} arrived {late:.1f}s after it expired (its "
            "sender had stopped waiting) and could undo a later change; use "
            f"`celery master {action} {name}`, which applies exactly once"
        )
    wait = broadcasts.time_left(SQL_WAIT) if broadcasts is not None else SQL_WAIT
    if action == "release":
        if name not in elector.locks:
            return nok(f"unknown lock name {name!r}: this worker knows {sorted(elector.locks)}")
        view = elector.snapshot().get(name) or {}
        if view.get("role") != "master" or view.get("epoch") is None:
            return ok(
                {
                    "lock_name": name,
                    "release_requested": False,
                    "by_this_call": False,
                    "detail": "this worker does not hold it; only its holder acts on a release",
                }
            )
        apply = release_command(name, who, view["epoch"], received)
    else:
        apply = enabled_command(elector.locks, name, action == "enable", who, why, received)
    return submit(elector, _offload(state), broadcasts, name, apply, wait)


def broadcast_hint(app: Any, lock_names: list[str]) -> None:
    """Send the hint on a connection of our own (the consumer's belongs to the main loop)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.1, interval_step=0.2)
            app.control.broadcast(
                HINT_COMMAND, arguments={"lock_names": lock_names}, connection=conn
            )
    except Exception as exc:  # broker down: standbys fall back to their check interval
        logger.warning("hint not sent (%s)", exc)
