"""Deterministic threads on virtual time: the runtime the simulation hands the real election.

Every thread the package starts through its runtime is a real OS thread, but
only one runs at a time: it runs until it reaches a yield point (a clock
read, a lock, an event wait, a thread start or join, a store call), then the
scheduler picks the next ready thread with the run's seeded random
generator. Virtual time moves by a small drawn cost per step, and jumps to
the next wake-up when no thread is ready. The same seed gives the same
interleaving, so a violation replays from its seed alone.

Readiness is kept incrementally (an event, a lock or a thread wakes its own
waiters; a heap holds the timed ones), so a step costs the same with ten
threads or thousands (``bench/sim/scale.py`` runs 200 workers).
"""

from __future__ import annotations

import contextlib
import heapq
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Killed", "Scheduler", "SimRuntime"]


class Killed(BaseException):
    """Unwinds a thread of a crashed worker (not an Exception: nothing catches it)."""


class Waitable:
    """Something threads block on: it wakes them when it changes."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.waiters: list[tuple[SimThread, int]] = []

    def satisfied(self) -> bool:
        raise NotImplementedError

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for t, gen in waiters:
            self.sched.wake(t, gen)


class SimThread(Waitable):
    def __init__(self, sched: Scheduler, target: Callable[[], None], name: str, owner: str) -> None:
        super().__init__(sched)
        self.target, self.name, self.owner = target, name, owner
        self.done = self.killed = False
        self.gen = 0
        self.atomic = 0
        self.what = "start"
        self._go = threading.Semaphore(0)
        self._os = threading.Thread(target=self._main, name=f"sim:{owner}:{name}", daemon=True)
        sched.threads.append(self)
        sched.by_os[self._os] = self
        self._os.start()
        sched.make_ready(self)

    def _main(self) -> None:
        self._go.acquire()
        try:
            if not self.killed:
                self.target()
        except Killed:
            pass
        except BaseException as exc:  # a bug in the package (or the world): a violation
            self.sched.errors.append((self.sched.time, self.owner, self.name, exc))
        finally:
            self.done = True
            self.sched.by_os.pop(self._os, None)
            self.notify()
            self.sched._baton.release()

    def satisfied(self) -> bool:
        return self.done

    # -- what the package sees (runtime.TaskLike) ------------------------------------
    def join(self, timeout: float | None = None) -> None:
        until = None if timeout is None else self.sched.time + timeout
        self.sched.block(f"join {self.name}", on=self, until=until)

    def is_alive(self) -> bool:
        return not self.done


class Scheduler:
    """Runs the simulated threads one at a time; ``time`` is the virtual clock (seconds)."""

    def __init__(self, rng: random.Random, step_cost: tuple[float, float] = (0.0, 0.002)) -> None:
        self.rng = rng
        self.step_cost = step_cost
        self.time = 0.0
        self.steps = 0
        self.threads: list[SimThread] = []
        self.by_os: dict[threading.Thread, SimThread] = {}
        self.paused: dict[str, float] = {}  # owner -> virtual time its threads resume
        self.errors: list[tuple[float, str, str, BaseException]] = []
        self.trace: deque[str] = deque(maxlen=20000)
        self.tracing = True
        #: (probability per step, longest stall, callback(start, end)): the whole host stalls
        #: inside a step (a GC pause, a VM descheduled), so every clock jumps at a random line
        self.stall: tuple[float, float, Callable[[float, float], None]] | None = None
        self._ready: list[SimThread] = []
        self._parked: dict[str, list[SimThread]] = {}  # ready, but their owner is paused
        self._timed: list[tuple[float, int, SimThread, int]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._baton = threading.Semaphore(0)

    # -- readiness ---------------------------------------------------------------------
    def make_ready(self, t: SimThread) -> None:
        t.gen += 1
        if not t.killed and self.paused.get(t.owner, 0.0) > self.time:
            self._parked.setdefault(t.owner, []).append(t)
        else:
            self._ready.append(t)

    def wake(self, t: SimThread, gen: int) -> None:
        if t.gen == gen and not t.done:
            self.make_ready(t)

    def pause(self, owner: str, until: float) -> None:
        """Park the owner's threads until ``until`` (they miss their turns, not their clocks)."""
        self.paused[owner] = until
        keep = [t for t in self._ready if t.owner != owner or t.killed]
        self._parked.setdefault(owner, []).extend(t for t in self._ready if t not in keep)
        self._ready = keep
        self.at(until, lambda: self._unpark(owner))

    def _unpark(self, owner: str) -> None:
        if self.paused.get(owner, 0.0) <= self.time:
            self.paused.pop(owner, None)
            self._ready.extend(self._parked.pop(owner, []))

    # -- from inside a simulated thread ------------------------------------------------
    def me(self) -> SimThread | None:
        return self.by_os.get(threading.current_thread())

    def point(self, what: str) -> None:
        """A yield point: another ready thread may run before this one goes on."""
        self.block(what)

    def block(self, what: str, on: Waitable | None = None, until: float | None = None) -> None:
        """Give way until ``on`` is satisfied or virtual ``until`` has come (neither: yield)."""
        t = self.me()
        if t is None or t.atomic:
            if on is not None and not on.satisfied() and (until is None or self.time < until):
                raise RuntimeError(f"{what}: would block outside a simulated thread")
            return
        t.what = what
        if (on is None and until is None) or (on is not None and on.satisfied()):
            self.make_ready(t)
        else:
            t.gen += 1
            if on is not None:
                on.waiters.append((t, t.gen))
            if until is not None:
                self._seq += 1
                heapq.heappush(self._timed, (until, self._seq, t, t.gen))
        self._baton.release()
        t._go.acquire()
        if t.killed:
            raise Killed

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """No switch inside (a transaction held across a switch would block other threads)."""
        t = self.me()
        if t is not None:
            t.atomic += 1
        try:
            yield
        finally:
            if t is not None:
                t.atomic -= 1

    # -- from the harness (the main thread) --------------------------------------------
    def at(self, when: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, action))

    def kill(self, owner: str) -> None:
        """A crashed worker: its threads never run its code again (they unwind at once)."""
        for t in self.threads:
            if t.owner == owner and not t.done and not t.killed:
                t.killed = True
                self._ready.append(t)
        self._parked.pop(owner, None)
        self.paused.pop(owner, None)

    def step(self) -> bool:
        """Run one thread to its next yield point, or move time on; False when nothing can."""
        while self._timers and self._timers[0][0] <= self.time:
            heapq.heappop(self._timers)[2]()
        while self._timed and self._timed[0][0] <= self.time:
            _, _, t, gen = heapq.heappop(self._timed)
            self.wake(t, gen)
        if not self._ready:
            wakes = [w[0] for w in (self._timed[:1] + self._timers[:1])]  # type: ignore[operator]
            if not wakes:
                return False
            self.time = max(self.time, min(wakes))
            return True
        i = self.rng.randrange(len(self._ready))
        t = self._ready[i]
        self._ready[i] = self._ready[-1]
        self._ready.pop()
        if t.done:
            return True
        self.time += self.rng.uniform(*self.step_cost)
        if self.stall is not None and self.rng.random() < self.stall[0]:
            began, self.time = self.time, self.time + self.rng.uniform(0, self.stall[1])
            self.stall[2](began, self.time)
        self.steps += 1
        if self.tracing:
            self.trace.append(f"{self.time:9.3f} {t.owner:>4} {t.name}: {t.what}")
        t.gen += 1  # any other registration of this thread is stale now
        t._go.release()
        self._baton.acquire()
        return True

    def run_until(self, end: float, check: Callable[[], bool] | None = None) -> None:
        """Step until virtual ``end``, or until ``check()`` (after each step) says stop."""
        while self.time < end:
            if not self.step() and not self._timers:
                self.time = end
            if check is not None and check():
                return

    def close(self) -> None:
        """Unwind every thread left (the run's end), so no OS thread outlives its run."""
        for t in self.threads:
            if not t.done:
                t.killed = True
        for t in self.threads:
            while not t.done:
                t._go.release()
                self._baton.acquire()


class SimEvent(Waitable):
    def __init__(self, sched: Scheduler) -> None:
        super().__init__(sched)
        self.flag = False

    def satisfied(self) -> bool:
        return self.flag

    def set(self) -> None:
        self.flag = True
        self.notify()
        self.sched.point("event set")

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float | None = None) -> bool:
        until = None if timeout is None else self.sched.time + timeout
        self.sched.block("event wait", on=self, until=until)
        return self.flag


class SimLock(Waitable):
    def __init__(self, sched: Scheduler) -> None:
        super().__init__(sched)
        self.held = False

    def satisfied(self) -> bool:
        return not self.held

    def __enter__(self) -> SimLock:
        self.sched.block("lock", on=self)
        while self.held:  # woken, but another waiter took it first
            self.sched.block("lock", on=self)
        self.held = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.held = False
        self.notify()


class SimRuntime:
    """``celery_master.runtime.Runtime`` for one simulated worker (``owner``)."""

    def __init__(self, sched: Scheduler, owner: str) -> None:
        self.sched, self.owner = sched, owner

    def now(self) -> float:
        self.sched.point("clock")
        return self.sched.time

    def spawn(self, target: Callable[[], None], name: str) -> SimThread:
        thread = SimThread(self.sched, target, name, self.owner)
        self.sched.point(f"spawned {name}")
        return thread

    def event(self) -> SimEvent:
        return SimEvent(self.sched)

    def lock(self) -> SimLock:
        return SimLock(self.sched)
