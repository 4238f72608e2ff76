"""Celery events for role changes: ``worker-master-elected`` and ``worker-master-stepped-down``.

Named ``worker-*`` because a worker started without ``-E`` still sends the
``worker`` event group. Sent from a thread and connection of our own: the
consumer's dispatcher belongs to Celery's main loop.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..election.lockstate import Role

__all__ = ["RoleEvents"]

logger = logging.getLogger(__name__)
_STOP = object()


class RoleEvents:
    """Queues role changes and sends them in order, best effort (broker down: dropped, logged)."""

    def __init__(self, app: Any, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="celery-master-events", daemon=True)
        self._failing = False
        self.roles: Callable[[], dict[str, Any]] | None = None  # the worker's whole role map

    def start(self) -> None:
        self._thread.start()

    def __call__(self, lock_name: str, role: Role, epoch: int, reason: str) -> None:
        kind = "worker-master-elected" if role is Role.MASTER else "worker-master-stepped-down"
        fields: dict[str, Any] = {
            "lock_name": lock_name,
            "epoch": epoch,
            "role": role.value,
            "reason": reason,
        }
        if self.roles is not None:  # Flower copies fields: the whole map, so no lock is lost
            fields["roles"] = {n: v["role"] for n, v in self.roles().items()}
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((kind, fields))

    def stop(self, timeout: float = 2.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            kind, fields = item
            try:
                with self.app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=2, interval_start=0.1, interval_step=0.2)
                    with self.app.events.Dispatcher(
                        conn, hostname=self.hostname, enabled=True, groups=["worker"]
                    ) as dispatcher:
                        dispatcher.send(kind, **fields)
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    logger.warning("could not send %s event (%s)", kind, exc)
                self._failing = True
