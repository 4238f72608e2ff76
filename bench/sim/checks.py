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
HARD = {
    "crash",
    "pause",
    "graceful",
    "leave",
    "stall",
    "outage",
    "dbclock",
    "takeover-wait",
    "release",
    "disable",
    "forget",
    "late-command",
    "start",
}


RESOLUTION = 0.01  # virtual seconds between two looks at renewals and liveness


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
    #: (at, kind, owner, the lock names it may delay: None for every one)
    events: list[tuple[float, str, str, frozenset[str] | None]] = field(default_factory=list)
    dead_holder: set[str] = field(default_factory=set)  # masterless spans that met one
    looked: float = -1.0
    pauses: list[tuple[str, float, float]] = field(default_factory=list)
    stalls: list[tuple[float, float]] = field(default_factory=list)
    masterless: dict[str, float] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    commands: dict[str, float] = field(default_factory=dict)  # control owner -> receipt
    changes: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))

    # -- reporting ---------------------------------------------------------------------
    def fail(self, what: str) -> None:
        self.violations.append(f"t={self.world.sched.time:.3f}: {what}")

    def fault(
        self, kind: str, owner: str, detail: str = "", scope: frozenset[str] | None = None
    ) -> None:
        self.counts[kind] += 1
        self.events.append((self.world.sched.time, kind, owner, scope))
        self.world.sched.trace.append(f"{self.world.sched.time:9.3f} FAULT {kind} {owner} {detail}")

    def paused(self, owner: str, start: float, end: float) -> None:
        self.pauses.append((owner, start, end))
        self.fault("pause", owner, f"until {end:.3f}", self.scope_of(owner))

    def scope_of(self, owner: str) -> frozenset[str]:
        """The lock names a fault of this worker may delay: those its leases or terms name."""
        worker = next((w for w in self.world.workers if w.owner == owner), None)
        if worker is None:
            return frozenset()
        with self.world.sched.atomic():
            leases = self.world.store.read()
        named = {n for n, lease in leases.items() if lease.holder == str(worker.holder)}
        running = {t.lock for t in self.terms.values() if t.owner == owner and t.open}
        return frozenset(named | running)

    def stalled(self, start: float, end: float) -> None:
        """The whole host stalled inside one step: every worker was paused for it."""
        for w in self.world.live():
            self.pauses.append((w.owner, start, end))
        self.stalls.append((start, end))
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
            self._changed(owner, args[0], result)

    def command_received(self, owner: str, at: float) -> None:
        self.commands[owner] = at

    def _changed(self, owner: str, lock: str, result: Any) -> None:
        """One command, one effect: a command's statement never lands over a newer change."""
        changed, lease = result
        self.enabled[lock] = lease.enabled
        if not changed:
            if owner in self.commands:
                self.counts["late commands refused"] += 1
            return
        received = self.commands.get(owner)
        now = self.world.sched.time
        stepped = received is not None and any(
            k == "dbclock" and received <= at <= now for at, k, _, _ in self.events
        )
        if received is not None and stepped:
            self.counts["late commands excused: database clock stepped"] += 1
        elif received is not None:
            newer = [o for t, o in self.changes[lock] if t > received and o != owner]
            if newer:
                self.fail(
                    f"one command, two effects: {owner}'s statement changed {lock!r} over a "
                    f"change {newer[-1]} made after the command was received at {received:.3f}"
                )
            self.counts["late commands applied"] += 1
        self.changes[lock].append((self.world.sched.time, owner))

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
        if now - self.looked < RESOLUTION:  # the bounds below are tenths of seconds and up
            return bool(self.violations)
        self.looked = now
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
            paused = self.world.sched.paused
            eligible = self.enabled.get(lock, True) and any(
                lock in w.locks and not w.leaving and paused.get(w.owner, 0.0) <= now
                for w in self.world.live()
            )
            mastered = any(
                t.lock == lock and t.open and not t.ctx._revoked and now < t.ctx.deadline
                for t in self.terms.values()
            )
            if not eligible or mastered:
                self.masterless.pop(lock, None)
                self.dead_holder.discard(lock)
                continue
            if lock not in self.masterless:
                self.masterless[lock] = now
                if self._holder_gone(lock):
                    self.dead_holder.add(lock)
            since = self.masterless[lock]
            if now - since > self.allowed(lock, since, now):
                self.fail(f"liveness: {lock!r} without a master for {now - since:.2f}s")
                self.masterless[lock] = now  # report each span once

    def _holder_gone(self, lock: str) -> bool:
        """The lease names a worker that is gone or paused: it must be waited out for a ttl."""
        with self.world.sched.atomic():
            lease = self.world.store.read([lock]).get(lock)
        if lease is None or lease.holder is None:
            return False
        now = self.world.sched.time
        running = {
            str(w.holder)
            for w in self.world.live()
            if self.world.sched.paused.get(w.owner, 0) <= now
        }
        return lease.holder not in running

    def allowed(self, lock: str, since: float, now: float) -> float:
        """How long ``lock`` may go without a master, given the faults that may delay it.

        A round trip's worth (check interval, heartbeat, the spread's grace)
        always, a failed statement's back-off after one; a silent holder's ttl once a fault
        that may delay this lock (or every lock) lands near the span, or the
        span began facing a gone holder's lease; plus outages and host stalls.
        """
        s = self.world.settings
        bound = s.heartbeat_interval + 3 * s.check_interval + 0.5
        window = since - s.ttl - s.heartbeat_interval
        runners = {w.owner for w in self.world.workers if lock in w.locks}
        fails = sum(
            1
            for at, kind, owner, _ in self.events
            if kind == "fail" and owner in runners and window <= at <= now
        )
        bound += fails * MAX_BACKOFF  # a round that failed backs off before it looks again
        hit = lock in self.dead_holder or any(
            window <= at <= now and kind in HARD and (scope is None or lock in scope)
            for at, kind, _, scope in self.events
        )
        if hit:
            bound += s.init_delay + s.ttl + s.check_interval + s.heartbeat_interval
        for a, b in [*self.world.faults.outages, *self.stalls]:
            bound += max(0.0, min(b, now) - max(a, window))
        for owner, a, b in self.pauses:
            if owner in self.gone_owners(lock):
                bound += max(0.0, min(b, now) - max(a, window))
        return bound

    def gone_owners(self, lock: str) -> set[str]:
        return {t.owner for t in self.terms.values() if t.lock == lock}
