"""Terms as master: start a job on acquisition, step down, free the lease once it stopped.

Only the holder ends its own lease, and only after the job has returned: a
voluntary hand-over therefore never lets another master start while this
job still runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..holder import Holder
from ..jobs.job import MasterContext
from ..jobs.runner import Runner
from ..runtime import REAL, Runtime
from ..settings import JobSettings
from ..store.leases import LeaseStore
from .lockstate import LockState, Role

__all__ = ["SPREAD_REASON", "Terms"]

logger = logging.getLogger(__name__)
SPREAD_REASON = "spread:"
MAX_START_BACKOFF = 60.0


class Terms:
    """Starts and ends terms for the elector; every role change goes through here."""

    def __init__(
        self,
        store: LeaseStore,
        holder: Holder,
        clock: Callable[[], float],
        wake: Callable[[], None],
        notify: Callable[[list[str]], None] | None = None,
        on_role_change: Callable[[str, Role, int, str], None] | None = None,
        settings: Mapping[str, JobSettings] | None = None,
        runtime: Runtime = REAL,
    ) -> None:
        self.settings = dict(settings or {})
        self.runtime = runtime
        self.store = store
        self.holder = holder
        self.holder_id = str(holder)
        self.clock = clock
        self.wake = wake
        self.notify = notify
        self.on_role_change = on_role_change

    def begin(self, lk: LockState, epoch: int, sent: float) -> None:
        """Start a term won by a statement sent at ``sent`` (its deadline counts from then)."""
        lk.epoch, lk.lost, lk.failures, lk.seen, lk.yield_to = epoch, False, 0, None, None
        lk.last_sent = sent
        deadline = sent + lk.settings.self_stop_after
        if self.clock() >= deadline:  # the acquire itself outlived the term: free it unstarted
            logger.warning(
                "won %r (epoch %d) too late to start it (the acquire took longer than %.1fs)",
                lk.name,
                epoch,
                lk.settings.self_stop_after,
            )
            lk.stop_reason = "won too late to start"
            self.wake()
            return
        ctx = MasterContext(
            lk.name,
            epoch,
            self.holder_id,
            deadline,
            fence=self._fence,
            clock=self.clock,
            runtime=self.runtime,
        )
        runner = lk.runner = Runner(
            lk.job, ctx, lk.settings.heartbeat_interval, self.wake, self.runtime
        )
        lk.since, lk.last_error = time.time(), None
        logger.info("%s became master of %r (epoch %d)", self.holder.node_name, lk.name, epoch)
        if runner.start():  # False: the watchdog revoked the term before its job could start
            self._role_changed(lk, Role.MASTER, epoch, "elected")

    def step_down(self, lk: LockState, reason: str) -> None:
        runner = lk.runner
        if runner is None or runner.stepping_down:
            return
        runner.step_down(reason)
        lk.since = time.time()
        logger.warning(
            "%s stops being master of %r (epoch %d): %s",
            self.holder.node_name,
            lk.name,
            runner.ctx.epoch,
            reason,
        )
        self.wake()
        self._role_changed(lk, lk.role, runner.ctx.epoch, reason)

    def free_stopped(self, locks: list[LockState]) -> None:
        """Release the leases of jobs that have stopped (one statement), then send a hint."""
        held: dict[str, int] = {}
        for lk in locks:
            if lk.runner is not None and lk.runner.stopped.is_set():
                runner, lk.runner = lk.runner, None
                lk.stop_reason = runner.reason
                if runner.failed:
                    lk.start_failures += 1
                    lk.last_error = "start() raised"
                    backoff = lk.settings.check_interval * 2**lk.start_failures
                    lk.hold_off_until = self.clock() + min(MAX_START_BACKOFF, backoff)
                else:
                    lk.start_failures = 0
                if lk.lost:
                    lk.epoch, lk.lost = None, False
            if lk.runner is None and lk.epoch is not None:
                held[lk.name] = lk.epoch
        if not held:
            return
        by_name = {lk.name: lk for lk in locks}
        why = {n: by_name[n].stop_reason or "" for n in held}
        targets = {n: t for n in held if (t := by_name[n].yield_to) is not None}
        freed = self.store.release(self.holder_id, held, why, targets)  # raises if DB down
        for name in held:  # freed, or no longer ours: either way not ours to release
            lk = by_name[name]
            lk.epoch, lk.yield_to, lk.next_due = None, None, self.clock()
        if freed and self.notify is not None:
            try:
                self.notify(freed)
            except Exception:
                logger.exception("could not send the hand-over hint")

    def _role_changed(self, lk: LockState, role: Role, epoch: int, reason: str) -> None:
        if self.on_role_change is None:
            return
        try:
            self.on_role_change(lk.name, role, epoch, reason)
        except Exception:
            logger.exception("role-change callback failed")

    def _fence(self, connection: Any, ctx: MasterContext) -> bool:
        timing = self.settings[ctx.lock_name]
        hold_ms = int(timing.heartbeat_interval * 1000)  # idle: ended by the server
        busy_ms = int(timing.ttl * 1000)  # each statement after the fence
        return self.store.fence(connection, ctx.lock_name, ctx.epoch, ctx.holder, hold_ms, busy_ms)
