"""Runs one term of a master job: start(ctx) in its own thread, stop(ctx) bounded.

Nothing a job does can raise into Celery or into the elector: exceptions are
logged with their traceback and turn into a step-down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import NotMaster
from ..runtime import REAL, Runtime, TaskLike
from .job import MasterContext, MasterJob

__all__ = ["Runner"]

logger = logging.getLogger(__name__)


class Runner:
    """One term: created on acquisition, finished once ``stopped`` is set.

    ``start()`` and ``step_down()`` decide under one lock: either the start
    thread exists before the term is revoked (and the stop path joins it), or
    it never starts. So a job never starts after its term was stopped, and
    ``stopped`` (after which the lease is freed) is never set while a start
    thread may still run.
    """

    def __init__(
        self,
        job: MasterJob,
        ctx: MasterContext,
        stop_timeout: float,
        on_change: Callable[[], None] = lambda: None,
        runtime: Runtime = REAL,
    ) -> None:
        self.job = job
        self.ctx = ctx
        self.stop_timeout = stop_timeout
        self.on_change = on_change
        self.runtime = runtime
        self.failed = False
        self.reason: str | None = None
        self.stopped = runtime.event()
        self._lock = runtime.lock()
        self._start_thread: TaskLike | None = None
        self._stop_thread: TaskLike | None = None

    @property
    def stepping_down(self) -> bool:
        return self.reason is not None

    def start(self) -> bool:
        """Start the job's thread, unless the term was already revoked; True if started."""
        with self._lock:
            if self.reason is not None:
                return False
            self._start_thread = self.runtime.spawn(
                self._run_start, f"celery-master-job-{self.job.lock_name}"
            )
            return True

    def _run_start(self) -> None:
        """A job that raises once its term was revoked is not a start failure.

        ``NotMaster`` from ``ctx.fence``, or anything raised after ``ctx.stopping``
        was set, is the job noticing the end of its term: it must not grow the
        start-failure hold-off, or a few database blips could keep a worker
        masterless long after the database is back.
        """
        if self.ctx.stopping.is_set():  # revoked before this thread ran: the job never starts
            return
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
            start_thread = self._start_thread  # None now: no start thread will ever exist
        self._stop_thread = self.runtime.spawn(
            lambda: self._run_stop(start_thread), f"celery-master-stop-{self.job.lock_name}"
        )

    def _run_stop(self, start_thread: TaskLike | None) -> None:
        """Set ``stopped`` only once stop() and start() have really returned.

        The lease is released only after that, so a voluntary hand-over never
        lets another master start while this job still runs, and this process
        never starts a new term of the lock meanwhile. A job that overruns its
        bound is logged loudly; if it never returns, the lease is not renewed
        and expires after the ttl (the only case where the bound is physical).
        """
        now = self.runtime.now
        began = now()
        threads: list[tuple[str, TaskLike]] = []
        if self.job.stop is not None:
            stopper = self.runtime.spawn(
                self._call_stop, f"celery-master-stop-{self.job.lock_name}"
            )
            threads.append(("stop()", stopper))
        if start_thread is not None:
            threads.append(("start()", start_thread))
        for what, thread in threads:
            thread.join(max(0.0, began + self.stop_timeout - now()))
            if thread.is_alive():
                logger.error(
                    "%s of %r still runs %.1fs after stopping was set (bound "
                    "%.1fs); the lease is held unrenewed until it returns and expires after the "
                    "ttl: let it return when ctx.stopping is set",
                    what,
                    self.job.lock_name,
                    now() - began,
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
