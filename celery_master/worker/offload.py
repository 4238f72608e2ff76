"""One thread that runs remote-control SQL off Celery's main loop.

Control handlers run on the worker's main loop and must stay short: they
hand their statement here and wait for it with a bound.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from ..store.leases import LeaseStore

__all__ = ["Offload"]

T = TypeVar("T")


class Offload:
    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[[LeaseStore], T]) -> Future[T]:
        if self._pool is None:  # created on first use: most workers never get a command
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="celery-master-control")
        return self._pool.submit(fn, self.store)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
