"""Stops a job the moment its term's deadline passes, whatever the elector is doing.

The elector may hang in a statement against a database that stopped
answering; the deadline must hold anyway (S1), so a second thread watches it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..runtime import REAL, Runtime
from .lockstate import LockState

__all__ = ["Watchdog"]

DEADLINE_REASON = (
    "lease deadline passed with no successful renewal (database unreachable or process paused)"
)


class Watchdog:
    def __init__(
        self,
        locks: Callable[[], Iterable[LockState]],
        step_down: Callable[[LockState, str], None],
        clock: Callable[[], float],
        period: float,
        runtime: Runtime = REAL,
    ) -> None:
        self.locks = locks
        self.step_down = step_down
        self.clock = clock
        self.period = period
        self.runtime = runtime
        self._closed = runtime.event()

    def start(self) -> None:
        self.runtime.spawn(self._run, "celery-master-watchdog")

    def stop(self) -> None:
        self._closed.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._closed.wait(self.check())

    def check(self) -> float:
        """Step down every term past its deadline; returns how long to sleep."""
        now = self.clock()
        wait = self.period
        for lk in list(self.locks()):
            runner = lk.runner
            if runner is None or runner.stepping_down:
                continue
            left = runner.ctx.deadline - now
            if left <= 0:
                self.step_down(lk, DEADLINE_REASON)
            else:
                wait = min(wait, left)
        return wait
