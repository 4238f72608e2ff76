"""Threads, events, locks and the clock the election runs on, handed in rather than imported.

Production uses real threads on the boot clock (``REAL``). The deterministic
simulation (``bench/sim``) hands in a runtime whose threads run one at a time
in an order drawn from a seed, on virtual time: every clock read, lock,
event wait, thread start and join is a point where it may switch threads, so
the same code that runs in a worker is explored interleaving by interleaving.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import clock

__all__ = ["REAL", "EventLike", "LockLike", "Runtime", "TaskLike"]


class TaskLike(Protocol):
    """What the election needs of a thread it started."""

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


class EventLike(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class LockLike(Protocol):
    def __enter__(self) -> object: ...

    def __exit__(self, *exc: Any) -> Any: ...


class Runtime:
    """Real threads, events and locks; durations on ``clock.now`` (boot time on Linux)."""

    def now(self) -> float:
        return clock.now()

    def spawn(self, target: Callable[[], None], name: str) -> TaskLike:
        """Start a daemon thread named ``name`` (a worker's shutdown never waits on it)."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def event(self) -> EventLike:
        return threading.Event()

    def lock(self) -> LockLike:
        return threading.Lock()


REAL = Runtime()
