"""Deterministic threads on virtual time: the runtime the simulation hands the real election.

Every thread the package starts through its runtime is a real OS thread, but
only one runs at a time: it runs until it reaches a yield point (a clock
read, a lock, an event wait, a thread start or join, a store call), then the
scheduler picks the next ready thread with the run's seeded random
generator. Virtual time moves by a small drawn cost per step, and jumps to
the next timer when no thread is ready. The same seed gives the same
interleaving, so a violation replays from its seed alone.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Killed", "Scheduler", "SimRuntime"]


class Killed(BaseException):
    """Unwinds a thread of a crashed worker (not an Exception: nothing catches it)."""


class SimThread:
    def __init__(self, sched: Scheduler, target: Callable[[], None], name: str, owner: str) -> None:
        self.sched, self.target, self.name, self.owner = sched, target, name, owner
        self.seq = len(sched.threads)
        self.done = self.killed = False
        self.until: float | None = None
        self.cond: Callable[[], bool] | None = None
        self.atomic = 0
        self.what = "start"
        self._go = threading.Semaphore(0)
        self._os = threading.Thread(target=self._main, name=f"sim:{owner}:{name}", daemon=True)
        sched.threads.append(self)
        sched.by_os[self._os] = self
        self._os.start()

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
            self.sched._baton.release()

    # -- what the package sees (runtime.TaskLike) ------------------------------------
    def join(self, timeout: float | None = None) -> None:
        until = None if timeout is None else self.sched.time + timeout
        self.sched.block(f"join {self.name}", cond=lambda: self.done, until=until)

    def is_alive(self) -> bool:
        return not self.done

    def ready(self, now: float) -> bool:
        if self.killed:
            return True  # runs only to raise Killed and unwind
        if self.cond is None and self.until is None:
            return True
        if self.cond is not None and self.cond():
            return True
        return self.until is not None and now >= self.until


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
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._baton = threading.Semaphore(0)
        #: (probability per step, longest stall, callback(start, end)): the whole host stalls
        #: inside a step (a GC pause, a VM descheduled), so every clock jumps at a random line
        self.stall: tuple[float, float, Callable[[float, float], None]] | None = None

    # -- from inside a simulated thread ------------------------------------------------
    def me(self) -> SimThread | None:
        return self.by_os.get(threading.current_thread())

    def point(self, what: str) -> None:
        """A yield point: another ready thread may run before this one goes on."""
        self.block(what)

    def block(
        self, what: str, cond: Callable[[], bool] | None = None, until: float | None = None
    ) -> None:
        """Give way until ``cond()`` holds or virtual ``until`` has come (neither: just yield)."""
        t = self.me()
        if t is None or t.atomic:
            if cond is not None and not cond() and (until is None or self.time < until):
                raise RuntimeError(f"{what}: would block outside a simulated thread")
            return
        t.cond, t.until, t.what = cond, until, what
        self._baton.release()
        t._go.acquire()
        t.cond = t.until = None
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
        self._timers.append((when, len(self._timers), action))
        self._timers.sort(key=lambda x: (x[0], x[1]))

    def kill(self, owner: str) -> None:
        """A crashed worker: its threads never run its code again (they unwind at once)."""
        for t in self.threads:
            if t.owner == owner and not t.done:
                t.killed = True
        self.paused.pop(owner, None)

    def step(self) -> bool:
        """Run one thread to its next yield point, or move time on; False when nothing can."""
        while self._timers and self._timers[0][0] <= self.time:
            _, _, action = self._timers.pop(0)
            action()
        live = [t for t in self.threads if not t.done]
        runnable = [t for t in live if self.paused.get(t.owner, 0.0) <= self.time or t.killed]
        ready = [t for t in runnable if t.ready(self.time)]
        if not ready:
            wakes = [t.until for t in runnable if t.until is not None]
            wakes += [p for p in self.paused.values() if p > self.time]
            wakes += [w for w, _, _ in self._timers[:1]]
            if not wakes:
                return False
            self.time = max(self.time, min(wakes))
            return True
        t = ready[self.rng.randrange(len(ready))]
        self.time += self.rng.uniform(*self.step_cost)
        if self.stall is not None and self.rng.random() < self.stall[0]:
            began, self.time = self.time, self.time + self.rng.uniform(0, self.stall[1])
            self.stall[2](began, self.time)
        self.steps += 1
        self.trace.append(f"{self.time:9.3f} {t.owner:>4} {t.name}: {t.what}")
        self.by_os[t._os] = t
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
        self.paused.clear()
        for _ in range(100_000):
            pending = [t for t in self.threads if not t.done]
            if not pending:
                return
            t = pending[0]
            t._go.release()
            self._baton.acquire()


class SimEvent:
    def __init__(self, sched: Scheduler) -> None:
        self.sched, self.flag = sched, False

    def set(self) -> None:
        self.flag = True
        self.sched.point("event set")

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    def wait(self, timeout: float | None = None) -> bool:
        until = None if timeout is None else self.sched.time + timeout
        self.sched.block("event wait", cond=lambda: self.flag, until=until)
        return self.flag


class SimLock:
    def __init__(self, sched: Scheduler) -> None:
        self.sched, self.held = sched, False

    def __enter__(self) -> SimLock:
        self.sched.block("lock", cond=lambda: not self.held)
        self.held = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.held = False


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
