"""Takeovers of silent holders, run apart from the round: a statement that waits costs only itself.

On PostgreSQL a takeover locks the lease row ``FOR UPDATE``, so it waits while
the old holder's job is inside a fenced transaction (until the statement's
bound). The round renews this worker's leases and takes free ones; it must
never wait behind that, or one blocked takeover would cost the worker every
lock it holds. So a takeover runs in a thread of its own, one at a time per
worker, and the round collects what it won at its next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from ..runtime import Runtime
from ..store.leases import LeaseStore
from .lockstate import LockState
from .terms import Terms

__all__ = ["Takeovers"]

logger = logging.getLogger(__name__)
Silent = Mapping[str, tuple[int, int, "str | None"]]


class Takeovers:
    def __init__(
        self,
        store: LeaseStore,
        holder_id: str,
        clock: Callable[[], float],
        runtime: Runtime,
        wake: Callable[[], None],
    ) -> None:
        self.store, self.holder_id, self.clock = store, holder_id, clock
        self.runtime, self.wake = runtime, wake
        #: names of the takeover in flight; they are not judged again until it is collected
        self.pending: frozenset[str] = frozenset()
        self._lock = runtime.lock()
        self._won: tuple[dict[str, int], float] | None = None

    def submit(self, silent: Silent, ttls: Mapping[str, float]) -> None:
        """Try the compare-and-set takeovers in the background (one batch at a time)."""
        if self.pending or not silent:
            return
        self.pending = frozenset(silent)
        args = (dict(silent), dict(ttls))
        self.runtime.spawn(lambda: self._run(*args), "celery-master-takeover")

    def _run(self, silent: Silent, ttls: Mapping[str, float]) -> None:
        sent = self.clock()
        won: dict[str, int] = {}
        try:
            won = self.store.acquire(self.holder_id, [], silent, ttls)
        except Exception as exc:  # the next look retries; a down database is logged by the round
            logger.info("takeover of %s did not go through (%s)", sorted(silent), exc)
        finally:
            with self._lock:
                self._won = (won, sent)
            self.wake()

    def settle(self, locks: Mapping[str, LockState], terms: Terms, leaving: bool) -> None:
        """Start the terms the finished takeover won; when leaving, free them unstarted."""
        done = self.collect()
        if done is None:
            return
        won, sent = done
        for name, epoch in won.items():
            lk = locks[name]
            if leaving or not lk.wanted:
                lk.epoch, lk.stop_reason = epoch, "won while leaving"  # free_stopped frees it
            else:
                terms.begin(lk, epoch, sent)

    def collect(self) -> tuple[dict[str, int], float] | None:
        """What the finished takeover won and when it was sent; its names may be judged again."""
        with self._lock:
            done, self._won = self._won, None
        if done is not None:
            self.pending = frozenset()
        return done
