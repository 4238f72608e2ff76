"""Broadcasts ``master_hint`` so standbys act on a freed lease now, not at their next look.

One thread and one broker connection, kept open: a graceful hand-over is one
release, one broadcast and one acquire, and opening a connection per hint
would cost more than all three. The consumer's connection belongs to
Celery's main loop, so this one is ours. Broker down: the hint is dropped
(logged once per state change); standbys fall back to their check interval.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from .control import HINT_COMMAND

__all__ = ["HintSender"]

logger = logging.getLogger(__name__)
_STOP = object()
WARM_UP_DESTINATION = "celery-master-warm-up@nowhere"  # no worker has this name


class HintSender:
    def __init__(self, app: Any) -> None:
        self.app = app
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._run, name="celery-master-hints", daemon=True)
        self._conn: Any = None
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def __call__(self, lock_names: list[str]) -> None:
        try:
            self._queue.put_nowait(list(lock_names))
        except queue.Full:
            logger.warning("hint queue full: hint for %s dropped", lock_names)

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (bounded), then close the connection."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        self._connect()  # now, not at the first hint: a hand-over must not wait for it
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            self._send(item)
        if self._conn is not None:
            self._conn.release()

    def _connect(self) -> None:
        """Connect, and publish one broadcast addressed to nobody.

        The first broadcast on a connection costs several milliseconds (producer,
        exchange declaration); paid here, it is not paid by the first hand-over.
        """
        try:
            self._conn = self.app.connection_for_write()
            self._conn.ensure_connection(max_retries=2, interval_start=0.1, interval_step=0.2)
            self.app.control.broadcast(
                HINT_COMMAND,
                arguments={"lock_names": []},
                destination=[WARM_UP_DESTINATION],
                connection=self._conn,
            )
        except Exception as exc:  # the broker may be down at boot: try again at the hint
            logger.debug("hint connection not made yet (%s)", exc)
            self._conn = None

    def _send(self, lock_names: list[str]) -> None:
        for attempt in (1, 2):  # a connection the broker dropped is re-made once
            try:
                if self._conn is None:
                    self._connect()
                if self._conn is None:
                    raise ConnectionError("no broker connection")
                self.app.control.broadcast(
                    HINT_COMMAND, arguments={"lock_names": lock_names}, connection=self._conn
                )
            except Exception as exc:
                if self._conn is not None:
                    self._conn.release()
                    self._conn = None
                if attempt == 2:
                    if not self._failing:
                        logger.warning(
                            "hint not sent (%s); standbys see it at their next look", exc
                        )
                    self._failing = True
            else:
                if self._failing:
                    logger.info("hints are sent again")
                self._failing = False
                return
