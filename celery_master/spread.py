"""Spreading lock names over live workers: no coordinator, no flapping.

With total weight W over N live workers the quota is ceil(W / N). A worker
hands a lease over (graceful release with a hint, marked *yielded*) only when
it would still hold at least as much as the lightest live worker afterwards,
so moves shrink differences and never go back and forth. A yielded lease is
taken at once by a worker that stays within its quota, by others only after a
grace period. The spread never delays a failover: a lease freed by a leaving
worker, or silent because its holder died, is taken at once by whoever sees it
first, and the balance is restored by later moves. ``prefer`` (a node-name glob) makes
non-matching workers defer to matching ones. Live workers come from the
member table in the lease database, which works on every broker (Celery's
worker heartbeats need events, which many deployments switch off); liveness
there is judged by database time, which is safe because the spread never
decides who may be master, only who tries first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .store.leases import Member

__all__ = ["Held", "Spread"]


@dataclass(frozen=True)
class Held:
    lock_name: str
    weight: int
    prefer: str | None


class Spread:
    """The member view of one elector and the rules applied to it."""

    def __init__(self, holder: str, node: str, total_weight: int, grace: float) -> None:
        self.holder = holder
        self.node = node
        self.total_weight = total_weight
        self.grace = grace
        self.members: list[Member] = []

    def update(self, members: Iterable[Member]) -> None:
        self.members = list(members)

    @property
    def live(self) -> int:
        return max(1, len({m.holder for m in self.members} | {self.holder}))

    @property
    def quota(self) -> int:
        return math.ceil(self.total_weight / self.live)

    def _preferred_elsewhere(self, prefer: str | None) -> bool:
        """True if ``prefer`` names other live workers and not this one."""
        if not prefer or fnmatchcase(self.node, prefer):
            return False
        return any(fnmatchcase(m.node, prefer) for m in self.members if m.holder != self.holder)

    def admit(self, weight: int, prefer: str | None, held_weight: int, takeable_for: float) -> bool:
        """May this worker take a takeable lease now?"""
        if takeable_for >= self.grace:
            return True  # nobody better took it: availability before spread
        if self._preferred_elsewhere(prefer):
            return False
        return held_weight + weight <= self.quota

    def surplus(self, held: list[Held]) -> list[str]:
        """Lock names to hand over: preferred elsewhere first, then moves that even out load.

        A lease moves only if this worker still holds at least as much as the
        receiver afterwards (load - w >= other + w): moves shrink differences,
        so they cannot go back and forth.
        """
        out = [h.lock_name for h in held if self._preferred_elsewhere(h.prefer)]
        kept = [h for h in held if h.lock_name not in out]
        others = sorted(m.held for m in self.members if m.holder != self.holder)
        load = sum(h.weight for h in kept)
        moved = 0
        for h in sorted(kept, key=lambda h: h.weight):
            if not others or (moved and load <= self.quota):
                break  # within quota: one move per look, as others act on the same view
            lightest = others[0]
            if load - h.weight < lightest + h.weight:
                continue
            out.append(h.lock_name)
            moved += 1
            load -= h.weight
            others[0] = lightest + h.weight
            others.sort()
        return out
