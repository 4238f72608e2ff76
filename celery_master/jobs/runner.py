"""Runs one term of a master job: start(ctx) in its own thread, stop(ctx) bounded.

Nothing a job does can raise into Celery or into the elector: exceptions are
logged with their traceback and turn into a step-down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .. import clock
from ..errors import NotMaster
from .job import MasterContext, MasterJob

__all__ = ["Runner"]

logger = logging.getLogger(__name__)


class Runner:
    """One term: created on acquisition, finished once ``stopped`` is set."""

    def __init__(
        self,
        job: MasterJob,
        ctx: MasterContext,
        stop_timeout: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.job = job
        self.ctx = ctx
        self.stop_timeout = stop_timeout
        self.on_change = on_change
        self.failed = False
        self.reason: str | None = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._start_thread: threading.Thread | None = None

    @property
    def stepping_down(self) -> bool:
        return self.reason is not None

    def start(self) -> None:
        self._start_thread = threading.Thread(
            target=self._run_start, name=f"celery-master-job-{self.job.lock_name}", daemon=True
        )
        self._start_thread.start()

    def _run_start(self) -> None:
        """A job that raises once its term was revoked is not a start failure.

        ``NotMaster`` from ``ctx.fence``, or anything raised after ``ctx.stopping``
        was set, is the job noticing the end of its term: it must not grow the
        start-failure hold-off, or a few database blips could keep a worker
        masterless long after the database is back.
        """
        try:
            self.job.start(self.ctx)
        except NotMaster as exc:
            logger.warning("start() of %r ended: %s", self.job.lock_name, exc)
            self.step_down("the job found its term had ended")
        except Exception:
            if self.ctx.stopping.is_set():
                logger.warning(
                    "start() of %r raised after its term ended", self.job.lock_name, exc_info=True
                )
                return
            logger.exception("start() of %r raised", self.job.lock_name)
            self.failed = True
            self.step_down("start() raised")

    def step_down(self, reason: str) -> None:
        """Revoke the term at once, then stop the job in the background (idempotent)."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            self.ctx.revoke()
        threading.Thread(
            target=self._run_stop, name=f"celery-master-stop-{self.job.lock_name}", daemon=True
        ).start()

    def _run_stop(self) -> None:
        """Set ``stopped`` only once stop() and start() have really returned.

        The lease is released only after that, so a voluntary hand-over never
        lets another master start while this job still runs, and this process
        never starts a new term of the lock meanwhile. A job that overruns its
        bound is logged loudly; if it never returns, the lease is not renewed
        and expires after the ttl (the only case where the bound is physical).
        """
        began = clock.now()
        threads = []
        if self.job.stop is not None:
            stopper = threading.Thread(
                target=self._call_stop,
                name=f"celery-master-stop-{self.job.lock_name}",
                daemon=True,
            )
            stopper.start()
            threads.append(("stop()", stopper))
        if self._start_thread is not None and self._start_thread is not threading.current_thread():
            threads.append(("start()", self._start_thread))
        for what, thread in threads:
            thread.join(max(0.0, began + self.stop_timeout - clock.now()))
            if thread.is_alive():
                logger.error(
                    "%s of %r still runs %.1fs after stopping was set (bound "
                    "%.1fs); the lease is held unrenewed until it returns and expires after the "
                    "ttl: let it return when ctx.stopping is set",
                    what,
                    self.job.lock_name,
                    clock.now() - began,
                    self.stop_timeout,
                )
                thread.join()
        self.stopped.set()
        self.on_change()

    def _call_stop(self) -> None:
        try:
            assert self.job.stop is not None
            self.job.stop(self.ctx)
        except Exception:
            logger.exception("stop() of %r raised", self.job.lock_name)
