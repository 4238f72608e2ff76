"""The election loop: one thread per worker process, all lock names.

Rules that keep S1 (at most one master) without trusting any wall clock:

* The master's term ends ``heartbeat_interval x max_heartbeat_retry_count``
  after its last successful renewal was *sent*, on its own monotonic clock
  (``MasterContext.is_master``); a watchdog thread stops the job then, even
  when the elector itself hangs in a statement.
* A standby takes over a lease that names a holder only after it has itself
  seen ``(holder, epoch, renewals)`` unchanged for a whole ttl on its own
  monotonic clock, measured from when that value *arrived*, and only with a
  compare-and-set on exactly that value. The master therefore has one
  heartbeat interval between its deadline and the earliest takeover.
* Only the holder ends its own lease: disable and release arrive as flags in
  the renewal's RETURNING; the job is stopped first, the lease freed after.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from .errors import ConfigurationError
from .holder import Holder
from .job import MasterContext, MasterJob
from .runner import Runner
from .settings import JobSettings
from .spread import Held, Spread
from .store.engine import mask_url
from .store.leases import LeaseStore

__all__ = ["Elector", "Role"]

logger = logging.getLogger("celery_master")
SPREAD_REASON = "spread:"
MAX_BACKOFF = 2.0  # a standby polling a dead database costs little; recovery is fast


class Role(str, enum.Enum):
    MASTER = "master"
    STANDBY = "standby"
    DISABLED = "disabled"


@dataclass
class _Lock:
    """The elector's view of one lock name."""

    job: MasterJob
    settings: JobSettings
    runner: Runner | None = None
    epoch: int | None = None  # epoch of the lease we hold in SQL, until freed or lost
    lost: bool = False
    failures: int = 0
    start_failures: int = 0
    next_renew: float = 0.0
    next_check: float = 0.0
    hold_off_until: float = 0.0
    seen: tuple[str, int, int, str | None] | None = None
    seen_at: float = 0.0
    free_since: float | None = None
    enabled: bool = True
    holder_seen: str | None = None
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    stop_reason: str | None = None

    @property
    def name(self) -> str:
        return self.job.lock_name

    @property
    def weight(self) -> int:
        return int(self.job.options.get("weight", 1))

    @property
    def prefer(self) -> str | None:
        return self.job.options.get("prefer")

    @property
    def role(self) -> Role:
        if self.runner is not None and not self.runner.stepping_down:
            return Role.MASTER
        return Role.STANDBY if self.enabled else Role.DISABLED


class Elector:
    """Owns the elector and watchdog threads; ``stop()`` hands every lease over."""

    def __init__(
        self,
        store: LeaseStore,
        jobs: Iterable[tuple[MasterJob, JobSettings]],
        holder: Holder,
        notify: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_role_change: Callable[[str, Role, int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.holder_id = str(holder)
        self.notify = notify
        self.clock = clock
        self.on_role_change = on_role_change
        self._control: ThreadPoolExecutor | None = None
        self.locks = {job.lock_name: _Lock(job, settings) for job, settings in jobs}
        if not self.locks:
            raise ConfigurationError("an elector needs at least one registered master job")
        self.init_delay = min(lk.settings.init_delay for lk in self.locks.values())
        self.tick = min(
            min(lk.settings.heartbeat_interval, lk.settings.check_interval)
            for lk in self.locks.values()
        )
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._leaving = threading.Event()
        self._db_down = False
        self._backoff = self.tick
        self._threads: list[threading.Thread] = []
        ttl = min(lk.settings.ttl for lk in self.locks.values())
        check = min(lk.settings.check_interval for lk in self.locks.values())
        self.member_period = max(check, ttl / 2)  # a join or a leave is seen within this
        self.member_window = 3 * max(lk.settings.ttl for lk in self.locks.values())
        self._next_member = self._yield_after = 0.0
        self._refreshes = 0
        self.spread = Spread(
            self.holder_id,
            holder.node_name,
            sum(lk.weight for lk in self.locks.values()),
            grace=2 * min(lk.settings.check_interval for lk in self.locks.values()),
        )

    # -- public ----------------------------------------------------------------
    def start(self) -> None:
        for target, name in (
            (self._run, "celery-master-elector"),
            (self._watch, "celery-master-watchdog"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self, lock_names: Iterable[str] | None = None) -> None:
        """A hint (broadcast or local): look at these lock names now."""
        for name in self.locks if lock_names is None else lock_names:
            lk = self.locks.get(name)
            if lk is not None:
                lk.next_check = lk.next_renew = 0.0  # a disable or release is seen at once
        self._wake.set()

    def submit(self, fn: Callable[[LeaseStore], Any]) -> Future[Any]:
        """Run ``fn(store)`` off Celery's main loop; the caller waits on the future, bounded."""
        if self._control is None:
            self._control = ThreadPoolExecutor(1, thread_name_prefix="celery-master-control")
        return self._control.submit(fn, self.store)

    def begin_handover(self) -> None:
        """Stop every job and free every lease; called at SIGTERM, before Celery's own stop."""
        self._leaving.set()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Hand over and wait (bounded) for the leases to be freed."""
        self.begin_handover()
        if timeout is None:
            timeout = 2 * max(lk.settings.heartbeat_interval for lk in self.locks.values()) + 2
        end = time.monotonic() + timeout
        for thread in self._threads[:1]:
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                logger.warning("celery-master: hand-over did not finish within %.1fs", timeout)
        self._closed.set()
        self._wake.set()
        if self._control is not None:
            self._control.shutdown(wait=False, cancel_futures=True)

    def roles(self) -> dict[str, Role]:
        return {name: lk.role for name, lk in self.locks.items()}

    def snapshot(self) -> dict[str, Any]:
        """Each lock name's role as this worker sees it; no I/O (runs on Celery's loop)."""
        out: dict[str, Any] = {}
        for name, lk in self.locks.items():
            ctx = lk.runner.ctx if lk.runner else None
            out[name] = {
                "role": lk.role.value,
                "epoch": ctx.epoch if ctx else None,
                "holder": Holder.node_of(lk.holder_seen) if not ctx else self.holder.node_name,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lk.since)),
                "last_error": lk.last_error,
            }
        return out

    def describe_database(self) -> str:
        return mask_url(self.store.engine.url)

    # -- threads ---------------------------------------------------------------
    def _watch(self) -> None:
        """Stop a job the moment its term's deadline passes, whatever the elector is doing."""
        while not self._closed.is_set():
            now = self.clock()
            wait = self.tick
            for lk in list(self.locks.values()):
                runner = lk.runner
                if runner is None or runner.stepping_down:
                    continue
                left = runner.ctx.deadline - now
                if left <= 0:
                    self._step_down(
                        lk,
                        "lease deadline passed with no successful renewal "
                        "(database unreachable or process paused)",
                    )
                else:
                    wait = min(wait, left)
            self._closed.wait(wait)

    def _run(self) -> None:
        if self._leaving.wait(self.init_delay):
            return
        try:
            self._setup()
            while True:
                self._wake.clear()
                if self._leaving.is_set():
                    self._handover()
                    if not any(lk.runner or lk.epoch is not None for lk in self.locks.values()):
                        return
                else:
                    self._tick()
                self._wake.wait(max(0.0, self._next_due() - self.clock()))
        except Exception:  # a bug: log it, never take the worker down
            logger.exception("celery-master: elector stopped by an unexpected error")
            for lk in self.locks.values():
                if lk.runner:
                    self._step_down(lk, "elector failed")

    def _setup(self) -> None:
        while not self._leaving.is_set():
            try:
                self.store.ensure_schema()
                self.store.ensure_rows(self.locks)
                self._refresh_members()
            except SQLAlchemyError as exc:
                self._db_failed(exc)
                self._leaving.wait(self._backoff)
            else:
                self._db_ok()
                return

    # -- one pass --------------------------------------------------------------
    def _tick(self) -> None:
        self._free_stopped()
        now = self.clock()
        if now >= self._next_member:
            self._guard(self._refresh_members)
            self._yield_surplus()
        now = self.clock()
        due = {
            name: lk.epoch
            for name, lk in self.locks.items()
            if lk.runner is not None
            and not lk.runner.stepping_down
            and lk.epoch is not None
            and lk.next_renew <= now
        }
        if due:
            self._renew({n: e for n, e in due.items() if e is not None})
        now = self.clock()
        wanted = [
            lk
            for lk in self.locks.values()
            if lk.runner is None
            and lk.epoch is None
            and lk.next_check <= now
            and lk.hold_off_until <= now
        ]
        if wanted:
            self._check(wanted)

    def _refresh_members(self) -> None:
        self._next_member = self.clock() + self.member_period
        self._refreshes += 1
        held = sum(lk.weight for lk in self.locks.values() if lk.role is Role.MASTER)
        members = self.store.heartbeat_member(
            self.holder_id,
            self.holder.node_name,
            held,
            self.member_window,
            prune=self._refreshes % 20 == 1,
        )
        self.spread.update(members)

    def _yield_surplus(self) -> None:
        """Hand over what another live worker under its quota should run instead."""
        now = self.clock()
        if now < self._yield_after:
            return
        mine = [
            Held(lk.name, lk.weight, lk.prefer)
            for lk in self.locks.values()
            if lk.role is Role.MASTER
        ]
        for name in self.spread.surplus(mine):
            lk = self.locks[name]
            lk.hold_off_until = now + 2 * lk.settings.ttl
            self._step_down(lk, f"{SPREAD_REASON} handing over to a less loaded worker")
            self._yield_after = now + self.member_period

    def _next_due(self) -> float:
        times = [self.clock() + self.tick * 10, self._next_member]
        for lk in self.locks.values():
            if lk.runner is not None and not lk.runner.stepping_down:
                times.append(lk.next_renew)
            elif lk.runner is None and lk.epoch is None:
                times.append(max(lk.next_check, lk.hold_off_until))
            elif lk.runner is None:  # a release to retry
                times.append(self.clock() + self._backoff)
        return min(times)

    def _renew(self, held: dict[str, int]) -> None:
        sent = self.clock()
        try:
            flags = self.store.renew(self.holder_id, held)
        except SQLAlchemyError as exc:
            self._db_failed(exc)
            for name in held:
                lk = self.locks[name]
                lk.failures += 1
                lk.next_renew = sent + lk.settings.heartbeat_interval
                lk.last_error = f"renewal failed: {type(exc).__name__}"
                if lk.failures >= lk.settings.max_heartbeat_retry_count:
                    self._step_down(lk, f"{lk.failures} renewals failed in a row")
            return
        self._db_ok()
        for name in held:
            lk = self.locks[name]
            runner = lk.runner
            assert runner is not None
            if name not in flags:
                lk.lost = True
                self._step_down(lk, "lease lost: another worker holds a newer epoch")
                continue
            enabled, release_requested = flags[name]
            lk.failures = 0
            lk.next_renew = sent + lk.settings.heartbeat_interval
            runner.ctx.extend(sent + lk.settings.self_stop_after)
            if not enabled:
                lk.enabled = False
                self._step_down(lk, "disabled")
            elif release_requested:
                lk.hold_off_until = self.clock() + lk.settings.ttl
                self._step_down(lk, "release requested")

    def _check(self, wanted: list[_Lock]) -> None:
        try:
            leases = self.store.read([lk.name for lk in wanted])
        except SQLAlchemyError as exc:
            self._db_failed(exc)
            for lk in wanted:
                lk.next_check = self.clock() + self._backoff
            return
        arrived = self.clock()
        self._db_ok()
        free: list[str] = []
        silent: dict[str, tuple[int, int, str | None]] = {}
        missing: list[str] = []
        for lk in wanted:
            lk.next_check = arrived + lk.settings.check_interval
            lease = leases.get(lk.name)
            if lease is None:
                missing.append(lk.name)
                continue
            lk.enabled, lk.holder_seen = lease.enabled, lease.holder
            if lease.holder is not None or not lease.enabled:
                lk.free_since = None
            if not lease.enabled:
                lk.seen = None
            elif lease.holder is None:
                lk.free_since = arrived if lk.free_since is None else lk.free_since
                if not lease.yielded or self._admit(lk, arrived - lk.free_since, arrived):
                    free.append(lk.name)  # a leaver's lease is taken at once (L2)
            else:
                seen = (lease.holder, lease.epoch, lease.renewals, lease.token)
                if lk.seen != seen:
                    lk.seen, lk.seen_at = seen, arrived
                ttl = max(lease.ttl or 0.0, lk.settings.ttl)
                if arrived - lk.seen_at >= ttl:  # a dead holder: take over at once (L1)
                    silent[lk.name] = (lease.epoch, lease.renewals, lease.token)
                else:
                    lk.next_check = min(lk.next_check, lk.seen_at + ttl)
        if missing:
            self._guard(lambda: self.store.ensure_rows(missing))
        if free or silent:
            self._acquire(free, silent)

    def _admit(self, lk: _Lock, takeable_for: float, now: float) -> bool:
        held = sum(x.weight for x in self.locks.values() if x.role is Role.MASTER)
        if self.spread.admit(lk.weight, lk.prefer, held, takeable_for):
            return True
        lk.next_check = min(lk.next_check, now + self.spread.grace - takeable_for)
        return False

    def _acquire(self, free: list[str], silent: dict[str, tuple[int, int, str | None]]) -> None:
        sent = self.clock()
        ttls = {n: self.locks[n].settings.ttl for n in [*free, *silent]}
        try:
            won = self.store.acquire(self.holder_id, free, silent, ttls)
        except SQLAlchemyError as exc:
            self._db_failed(exc)
            return
        for name, epoch in won.items():
            lk = self.locks[name]
            ctx = MasterContext(
                name,
                epoch,
                self.holder_id,
                sent + lk.settings.self_stop_after,
                fence=self._fence,
                clock=self.clock,
            )
            lk.epoch, lk.lost, lk.failures, lk.seen = epoch, False, 0, None
            lk.next_renew = sent + lk.settings.heartbeat_interval
            lk.runner = Runner(lk.job, ctx, lk.settings.heartbeat_interval, self._wake.set)
            lk.since, lk.last_error = time.time(), None
            logger.info(
                "celery-master: %s became master of %r (epoch %d)",
                self.holder.node_name,
                name,
                epoch,
            )
            lk.runner.start()
            self._role_changed(lk, Role.MASTER, epoch, "elected")

    def _step_down(self, lk: _Lock, reason: str) -> None:
        runner = lk.runner
        if runner is None or runner.stepping_down:
            return
        runner.step_down(reason)
        lk.since = time.time()
        logger.warning(
            "celery-master: %s stops being master of %r (epoch %d): %s",
            self.holder.node_name,
            lk.name,
            runner.ctx.epoch,
            reason,
        )
        self._wake.set()
        self._role_changed(lk, lk.role, runner.ctx.epoch, reason)

    def _free_stopped(self) -> None:
        """Release the leases of jobs that have stopped (one statement), then send a hint."""
        held: dict[str, int] = {}
        for lk in self.locks.values():
            if lk.runner is not None and lk.runner.stopped.is_set():
                runner, lk.runner = lk.runner, None
                lk.stop_reason = runner.reason
                if runner.failed:
                    lk.start_failures += 1
                    lk.last_error = "start() raised"
                    lk.hold_off_until = self.clock() + min(
                        60.0, lk.settings.check_interval * 2**lk.start_failures
                    )
                else:
                    lk.start_failures = 0
                if lk.lost:
                    lk.epoch, lk.lost = None, False
            if lk.runner is None and lk.epoch is not None:
                held[lk.name] = lk.epoch
        if not held:
            return
        try:
            why = {n: self.locks[n].stop_reason or "" for n in held}
            yielded = [n for n, reason in why.items() if reason.startswith(SPREAD_REASON)]
            freed = self.store.release(self.holder_id, held, why, yielded)
        except SQLAlchemyError as exc:
            self._db_failed(exc)
            return
        self._db_ok()
        for name in held:  # freed, or no longer ours: either way not ours to release
            self.locks[name].epoch = None
            self.locks[name].next_check = self.clock()
        if freed and self.notify is not None:
            try:
                self.notify(freed)
            except Exception:
                logger.exception("celery-master: could not send the hand-over hint")

    def _handover(self) -> None:
        for lk in self.locks.values():
            if lk.runner is not None:
                self._step_down(lk, "worker shutting down")
        self._free_stopped()
        if not any(lk.runner or lk.epoch is not None for lk in self.locks.values()):
            self._guard(lambda: self.store.leave_member(self.holder_id))

    # -- helpers ---------------------------------------------------------------
    def _role_changed(self, lk: _Lock, role: Role, epoch: int, reason: str) -> None:
        if self.on_role_change is None:
            return
        try:
            self.on_role_change(lk.name, role, epoch, reason)
        except Exception:
            logger.exception("celery-master: role-change callback failed")

    def _fence(self, connection: Any, ctx: MasterContext) -> bool:
        hold_ms = int(self.locks[ctx.lock_name].settings.heartbeat_interval * 1000)
        return self.store.fence(connection, ctx.lock_name, ctx.epoch, ctx.holder, hold_ms)

    def _guard(self, action: Callable[[], object]) -> None:
        try:
            action()
        except SQLAlchemyError as exc:
            self._db_failed(exc)

    def _db_failed(self, exc: Exception) -> None:
        self._backoff = min(max(MAX_BACKOFF, self.tick), self._backoff * 2)
        if not self._db_down:
            self._db_down = True
            down = isinstance(exc, OperationalError | InterfaceError)
            state = "unreachable" if down else "failing"
            logger.warning(
                "celery-master: lease database %s %s (%s); retrying with backoff",
                self.describe_database(),
                state,
                str(exc).splitlines()[0][:200],
            )

    def _db_ok(self) -> None:
        self._backoff = self.tick
        if self._db_down:
            self._db_down = False
            logger.warning(
                "celery-master: lease database %s reachable again", self.describe_database()
            )
