"""The consumer step that tells ``mastercontrol`` when the broadcast in hand expired.

Control handlers see only their arguments. kombu stamps every broadcast with
an ``expires`` header (the sender's send time + its reply timeout), and a
command read after that moment was read late: its sender stopped listening,
and applying it now could undo a change made since (a ``disable`` delivered
after a later ``enable``). This step puts a callback first in the pidbox
consumer's public ``callbacks`` list, so it sees each message just before
Celery dispatches it, and registers it again whenever the consumer is rebuilt
(a broker reconnection restarts consumer steps; a command error resets the
pidbox alone, which ``Broadcasts.attach`` notices on the next command).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from celery import bootsteps
from celery.worker.consumer.control import Control

from .. import clock

__all__ = ["CLOCK_SKEW", "BroadcastStep", "Broadcasts"]

logger = logging.getLogger(__name__)
#: senders' and workers' wall clocks may differ by this much before a broadcast counts as late
CLOCK_SKEW = 1.0
REPLY_MARGIN = 0.1  # a reply needs this long to reach its sender
MIN_WAIT = 0.25  # the least a command waits for its statement before saying "not known yet"


class Broadcasts:
    """What ``mastercontrol`` knows about the broadcast in hand, and its pending SQL."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.expires: float | None = None
        self.received: float | None = None  # wall clock, to compare with the sender's expires
        self.received_mono: float | None = None  # this worker's clock: what a command is held to
        #: the one command of this worker still waiting for the lease database
        self.pending: Future[Any] | None = None
        self.lock = threading.Lock()

    def _pidbox_consumer(self) -> Any:
        for step in getattr(self.consumer, "steps", ()):
            if isinstance(step, Control):
                return getattr(step.box, "consumer", None)
        return None

    def attach(self) -> bool:
        """Put the callback first on the current pidbox consumer; False if it was missing."""
        pidbox = self._pidbox_consumer()
        if pidbox is None:
            return False
        if any(cb == self.on_message for cb in pidbox.callbacks):
            return True
        pidbox.callbacks.insert(0, self.on_message)
        return False

    def on_message(self, body: Any, message: Any) -> None:
        """Runs on the main loop for every broadcast, right before Celery dispatches it.

        Never raises: an exception here would keep Celery from dispatching the message.
        """
        self.received, self.received_mono = time.time(), clock.now()
        try:
            expires = (getattr(message, "headers", None) or {}).get("expires")
        except Exception:  # a transport's odd message object: treat as no header
            expires = None
        self.expires = float(expires) if isinstance(expires, (int, float)) and expires else None

    def expired_for(self) -> float | None:
        """Seconds the broadcast in hand had expired when it arrived; None if it had not.

        Unknown (no header, or the callback was not on the consumer for this
        message) counts as not expired: applied as before.
        """
        if not self.attach():
            self.expires = self.received = self.received_mono = None  # another message's stamp
            return None
        if self.expires is None or self.received is None:
            return None
        if self.received <= self.expires + CLOCK_SKEW:
            return None
        return self.received - self.expires

    def received_at(self) -> float:
        """When the broadcast in hand arrived, on this worker's monotonic clock (now if unknown)."""
        return clock.now() if self.received_mono is None else self.received_mono

    def time_left(self, at_most: float) -> float:
        """How long a reply may wait and still reach its sender (it stops at ``expires``)."""
        if self.expires is None:
            return at_most
        # within the allowed skew the sender's clock may run ahead: it may still be listening
        return max(MIN_WAIT, min(at_most, self.expires - time.time() - REPLY_MARGIN))


class BroadcastStep(bootsteps.StartStopStep):
    """Owns ``consumer.master_broadcasts``; started after Celery's remote-control step."""

    label = "celery-master-broadcasts"
    requires = ("celery.worker.consumer.control:Control",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        c.master_broadcasts = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        return bool(c.app.conf.worker_enable_remote_control)

    def start(self, c: Any) -> None:
        if c.master_broadcasts is None:
            c.master_broadcasts = Broadcasts(c)
        c.master_broadcasts.attach()  # a new pidbox consumer after every reconnection

    def stop(self, c: Any) -> None:
        """Nothing to tear down: the callback goes away with the pidbox consumer."""
