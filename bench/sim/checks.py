"""The promises, judged after every step of a simulated run (DESIGN.md's invariants).

* S1: no two workers' start()..stop() of one lock name overlap (a worker that
  was paused past its own deadline is excused: fencing covers it); a job never
  starts after its term was stopped or its lease released; a lease is never
  freed while its start() runs;
* epochs: every acquisition of a lock name gets an epoch above every earlier one;
* S2: a fenced write is accepted only under the current epoch;
* renewals are never late while the worker runs (a statement that waits costs
  only itself);
* liveness: an enabled lock name with a live worker that runs it is never
  without a master longer than the bound its recent faults allow;
* no thread of the package dies of an exception.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_master.health import MAX_BACKOFF

if TYPE_CHECKING:
    from bench.sim.world import SimWorker, World

__all__ = ["Checks", "Violation"]

# faults after which a lock may wait out a silent holder's ttl (a worker that joins or restarts
# meets a crashed holder's lease and must watch it for a whole ttl before taking it)
HARD = {"crash", "pause", "stall", "outage", "takeover-wait", "release", "disable", "start", "join"}


class Violation(AssertionError):
    pass


@dataclass
class Term:
    owner: str
    lock: str
    epoch: int
    ctx: Any
    began: float
    start_done: bool = False
    stop_done: bool = False

    @property
    def open(self) -> bool:
        return not (self.start_done and self.stop_done)


@dataclass
class Checks:
    world: World
    violations: list[str] = field(default_factory=list)
    terms: dict[tuple[str, str, int], Term] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    started: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    released: dict[tuple[str, int], float] = field(default_factory=dict)
    attempts: dict[tuple[str, str], float] = field(default_factory=dict)
    enabled: dict[str, bool] = field(default_factory=dict)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (at, kind, owner)
    pauses: list[tuple[str, float, float]] = field(default_factory=list)
    masterless: dict[str, float] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    # -- reporting ---------------------------------------------------------------------
    def fail(self, what: str) -> None:
        self.violations.append(f"t={self.world.sched.time:.3f}: {what}")

    def fault(self, kind: str, owner: str, detail: str = "") -> None:
        self.counts[kind] += 1
        self.events.append((self.world.sched.time, kind, owner))
        self.world.sched.trace.append(f"{self.world.sched.time:9.3f} FAULT {kind} {owner} {detail}")

    def paused(self, owner: str, start: float, end: float) -> None:
        self.pauses.append((owner, start, end))
        self.fault("pause", owner, f"until {end:.3f}")

    def stalled(self, start: float, end: float) -> None:
        """The whole host stalled inside one step: every worker was paused for it."""
        for w in self.world.live():
            self.pauses.append((w.owner, start, end))
        self.fault("stall", "*", f"{end - start:.3f}s")

    def _paused_within(self, owner: str, a: float, b: float) -> bool:
        return any(o == owner and s < b and e > a for o, s, e in self.pauses)

    # -- jobs --------------------------------------------------------------------------
    def start_entered(self, worker: SimWorker, ctx: Any) -> None:
        now, lock, epoch = self.world.sched.time, ctx.lock_name, ctx.epoch
        self.counts["terms"] += 1
        if ctx.stopping.is_set():
            self.fail(
                f"S1: start() of {lock!r} epoch {epoch} on {worker} began after its term "
                "was stopped"
            )
        if (lock, epoch) in self.released:
            self.fail(
                f"S1: start() of {lock!r} epoch {epoch} on {worker} began after its lease "
                "was released"
            )
        if epoch <= self.started[lock]:
            self.fail(f"epoch: {lock!r} started epoch {epoch} after epoch {self.started[lock]}")
        self.started[lock] = max(self.started[lock], epoch)
        hb = self.world.settings.heartbeat_interval
        for t in self.terms.values():
            if t.lock != lock or not t.open or t.owner == worker.owner:
                continue
            if self._paused_within(t.owner, t.ctx.deadline - hb, now):
                self.counts["overlap excused: paused holder"] += 1
                continue
            self.fail(
                f"S1: {worker} starts {lock!r} epoch {epoch} while {t.owner} still runs epoch "
                f"{t.epoch} (its deadline {t.ctx.deadline:.3f})"
            )
        self.terms[(worker.owner, lock, epoch)] = Term(worker.owner, lock, epoch, ctx, now)

    def start_returned(self, worker: SimWorker, ctx: Any) -> None:
        term = self.terms.get((worker.owner, ctx.lock_name, ctx.epoch))
        if term is not None:
            term.start_done = True

    def stop_called(self, worker: SimWorker, ctx: Any) -> None:
        term = self.terms.get((worker.owner, ctx.lock_name, ctx.epoch))
        if term is not None:
            term.stop_done = True

    def crashed(self, worker: SimWorker) -> None:
        for t in self.terms.values():
            if t.owner == worker.owner:
                t.start_done = t.stop_done = True

    def fenced(self, worker: SimWorker, ctx: Any, accepted: bool) -> None:
        current = self.epochs[ctx.lock_name]
        stale = ctx.epoch < current
        self.counts["fenced writes" if accepted else "fenced writes refused"] += 1
        if stale:
            self.counts["stale writes attempted"] += 1
            self.counts["stale writes refused" if not accepted else "stale writes ACCEPTED"] += 1
        if accepted and ctx.epoch != current:
            self.fail(
                f"S2: {worker} wrote under epoch {ctx.epoch} of {ctx.lock_name!r}, "
                f"current {current}"
            )

    def role_changed(self, worker: SimWorker, name: str, role: str, epoch: int, why: str) -> None:
        self.world.sched.trace.append(
            f"{self.world.sched.time:9.3f} ROLE {worker} {name} {role} e{epoch}: {why}"
        )

    # -- the database ------------------------------------------------------------------
    def calling(self, owner: str, name: str, args: tuple[Any, ...]) -> None:
        if name == "tick":
            for lock in args[1]:
                self.attempts[(owner, lock)] = self.world.sched.time

    def observed(
        self, owner: str, name: str, args: tuple[Any, ...], kwargs: dict, result: Any
    ) -> None:
        if name == "tick":
            self._acquired(owner, result.taken)
        elif name == "acquire":
            self._acquired(owner, result)
        elif name == "release":
            held = args[1]
            for lock in result:
                epoch = held[lock]
                self.released[(lock, epoch)] = self.world.sched.time
                term = self.terms.get((owner, lock, epoch))
                if term is not None and not term.start_done:
                    self.fail(f"S1: {owner} freed {lock!r} epoch {epoch} while its start() runs")
        elif name == "set_enabled":
            self.enabled[args[0]] = result[1].enabled

    def _acquired(self, owner: str, won: dict[str, int]) -> None:
        now = self.world.sched.time
        for lock, epoch in won.items():
            self.counts["acquisitions"] += 1
            if epoch <= self.epochs[lock]:
                self.fail(
                    f"epoch: {owner} acquired {lock!r} at epoch {epoch}, "
                    f"not above {self.epochs[lock]}"
                )
            self.epochs[lock] = max(self.epochs[lock], epoch)
            self.attempts[(owner, lock)] = now

    # -- after every step --------------------------------------------------------------
    def step(self) -> bool:
        """Judge the state after a step; True once a promise is broken (the run stops)."""
        world = self.world
        now, s = world.sched.time, world.settings
        for err in world.sched.errors:
            self.fail(f"a thread died: {err[1]} {err[2]}: {err[3]!r}")
        world.sched.errors.clear()
        for w in world.live():
            for lk in w.elector.locks.values():
                if not lk.held:
                    continue
                last = max(self.attempts.get((w.owner, lk.name), 0.0), lk.last_sent)
                late = now - last - s.heartbeat_interval
                if late > 0.25 and not self._paused_within(w.owner, last, now):
                    self.fail(f"renewal of {lk.name!r} on {w} is {late:.2f}s past its due time")
                    self.attempts[(w.owner, lk.name)] = now  # once per lateness
        self._liveness(now)
        return bool(self.violations)

    def _liveness(self, now: float) -> None:
        names = {n for w in self.world.workers for n in w.locks}
        for lock in sorted(names):
            eligible = self.enabled.get(lock, True) and any(
                lock in w.locks and not w.leaving for w in self.world.live()
            )
            mastered = any(
                t.lock == lock and t.open and not t.ctx._revoked and now < t.ctx.deadline
                for t in self.terms.values()
            )
            if not eligible or mastered:
                self.masterless.pop(lock, None)
                continue
            since = self.masterless.setdefault(lock, now)
            if now - since > self.allowed(since, now) and since >= 0:
                self.fail(f"liveness: {lock!r} without a master for {now - since:.2f}s")
                self.masterless[lock] = now  # report each span once

    def allowed(self, since: float, now: float) -> float:
        """How long a lock may go without a master, given the faults around ``since``."""
        s = self.world.settings
        bound = s.heartbeat_interval + 3 * s.check_interval + MAX_BACKOFF + 0.5
        window = since - s.ttl - s.heartbeat_interval
        if any(window <= at <= now and kind in HARD for at, kind, _ in self.events):
            bound += s.init_delay + s.ttl + s.check_interval + s.heartbeat_interval
        for a, b in self.world.faults.outages:
            bound += max(0.0, min(b, now) - max(a, window))
        for _, a, b in self.pauses:
            bound += max(0.0, min(b, now) - max(a, window))
        return bound
