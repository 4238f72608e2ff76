"""Remote-control commands, registered when the app imports celery_master.

Handlers run on the worker's main loop: they only read the elector's memory
or wake it; SQL work stays on the elector thread.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.control import control_command, ok

__all__ = ["HINT_COMMAND", "broadcast_hint"]

logger = logging.getLogger("celery_master")
HINT_COMMAND = "master_hint"


def _elector(state: Any) -> Any:
    return getattr(state.consumer.controller, "master_elector", None)


@control_command(
    name=HINT_COMMAND,
    args=[("lock_names", str)],
    signature="[LOCK_NAMES]",
)
def master_hint(state: Any, lock_names: Any = None, **kwargs: Any) -> dict[str, Any]:
    """A lease was freed somewhere: look at it now instead of at the next check."""
    elector = _elector(state)
    if elector is not None:
        if isinstance(lock_names, str):
            lock_names = [n for n in lock_names.split(",") if n]
        elector.wake(lock_names or None)
    return ok("woken")


def broadcast_hint(app: Any, lock_names: list[str]) -> None:
    """Send the hint on a connection of our own (the consumer's belongs to the main loop)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.1, interval_step=0.2)
            app.control.broadcast(
                HINT_COMMAND, arguments={"lock_names": lock_names}, connection=conn
            )
    except Exception as exc:  # broker down: standbys fall back to their check interval
        logger.warning("celery-master: hand-over hint not sent (%s)", exc)
