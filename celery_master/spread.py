"""Spreading lock names over live workers: no coordinator, no flapping.

With total weight W over N live workers the quota is ceil(W / N). A standby
takes a lease at once while it stays within its quota, and otherwise only once
the lease has stayed takeable for a grace period, so a worker under its quota
wins it first, and no lease stays without a master because of the spread. A
worker over its quota yields its surplus (graceful release with a hint) only
when another live worker is under quota. ``prefer`` (a node-name glob) makes
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
        """Lock names to hand over: preferred elsewhere first, then weight above quota."""
        out = [h.lock_name for h in held if self._preferred_elsewhere(h.prefer)]
        kept = [h for h in held if h.lock_name not in out]
        others = [m for m in self.members if m.holder != self.holder]
        deficit = sum(max(0, self.quota - m.held) for m in others)
        load = sum(h.weight for h in kept)
        for h in sorted(kept, key=lambda h: h.weight):
            if load <= self.quota or deficit < h.weight:
                break
            out.append(h.lock_name)
            load -= h.weight
            deficit -= h.weight
        return out
