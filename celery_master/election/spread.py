"""Spreading lock names over live workers, per lock name: no coordinator, no flapping.

A cluster is not homogeneous: workers of one app may run different lock
names, and several apps may share one lease database. So every rule is
computed per lock name over its *candidates*, the live members that run it
(never over every row of the member table):

* a worker's *load* is the weight it holds (over every lock name it holds);
* a held lock moves only to a lighter candidate of that lock, and only if
  ``load - w >= other + w``: every move shrinks the differences, so moves
  cannot go back and forth; above the candidates' fair share a worker makes
  as many such moves as it takes, within it one per look (its peers act on
  the same view);
* ``prefer`` (a node-name glob) hands a lock to a live candidate whose node
  name matches, and makes others leave a free lease to it for a grace;
* a yielded lease is taken at once by the candidate it was yielded to, and by
  any candidate once the grace has passed (availability before balance).

Membership lives in the lease database (works on every broker; Celery's
worker heartbeats need events); liveness there is judged by database time,
which is safe because the spread decides who tries first, never who may be
master.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..store.rows import Member

__all__ = ["Held", "Move", "Spread"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    lock_name: str
    weight: int
    prefer: str | None


@dataclass(frozen=True)
class Move:
    lock_name: str
    to_holder: str
    to_node: str
    why: str


class Spread:
    """The member view of one elector and the rules applied to it."""

    def __init__(self, holder: str, node: str, app: str, locks: dict[str, int]) -> None:
        self.holder = holder
        self.node = node
        self.app = app
        self.locks = locks
        self.others: list[Member] = []
        self._warned: set[tuple[str, str]] = set()

    def update(self, members: Iterable[Member]) -> None:
        self.others = [m for m in members if m.holder != self.holder]
        for m in self.others:
            for name in set(m.locks) & set(self.locks):
                if m.app != self.app and (name, m.app) not in self._warned:
                    self._warned.add((name, m.app))
                    logger.warning(
                        "lock name %r is registered by app %r too (this worker: app %r): "
                        "lock names are global in the lease database, so both apps' jobs "
                        "share one master; rename one if that is not meant",
                        name,
                        m.app,
                        self.app,
                    )

    def candidates(self, lock_name: str) -> list[Member]:
        """Other live workers that run ``lock_name`` and can take it now.

        A worker publishes weight 0 for a lock name it runs but may not take
        yet (its start() failed and it backs off, or it is in a hold-off):
        handing a lease to it would leave the lock masterless for nothing.
        """
        return [m for m in self.others if m.locks.get(lock_name, 0) > 0]

    def deferred(self, lock_name: str, prefer: str | None) -> bool:
        """True if ``prefer`` names another live candidate of this lock and not this worker."""
        if not prefer or fnmatchcase(self.node, prefer):
            return False
        return any(fnmatchcase(m.node, prefer) for m in self.candidates(lock_name))

    def moves(self, held: list[Held]) -> list[Move]:
        """Lock names to hand over, and to whom: preferred elsewhere first, then balance."""
        loads = {m.holder: m.held for m in self.others}
        load = sum(h.weight for h in held)
        out: list[Move] = []
        for h in held:
            if not h.prefer or fnmatchcase(self.node, h.prefer):
                continue
            matching = [m for m in self.candidates(h.lock_name) if fnmatchcase(m.node, h.prefer)]
            if matching:
                to = min(matching, key=lambda m: (loads[m.holder], m.holder))
                out.append(Move(h.lock_name, to.holder, to.node, f"prefer={h.prefer}"))
                loads[to.holder] += h.weight
                load -= h.weight
        moved = {m.lock_name for m in out}
        balanced = 0
        for h in sorted(held, key=lambda h: (h.weight, h.lock_name)):
            if h.lock_name in moved:
                continue
            cands = self.candidates(h.lock_name)
            if not cands:
                continue
            fair = math.ceil((load + sum(loads[m.holder] for m in cands)) / (len(cands) + 1))
            to = min(cands, key=lambda m: (loads[m.holder], m.holder))
            # above the fair share, as many moves as it takes; within it, one move per look
            # (others act on the same view), and only one that shrinks the difference
            if (load > fair or not balanced) and load - h.weight >= loads[to.holder] + h.weight:
                balanced += 1
                out.append(Move(h.lock_name, to.holder, to.node, "balance"))
                loads[to.holder] += h.weight
                load -= h.weight
        return out
