"""The spread at scale, in virtual time: `python bench/simulate.py --scale [--workers W --locks L]`.

The real election of W workers that all run L lock names (trivial jobs, no
faults), on one SQLite file: how long the spread takes to settle after a
cold start, a join, a leave (SIGTERM) and a crash; how many leases move per
event; and what one worker's round costs (statements and rows per round).
Settled: every lock name has a master and no lease has moved for two member
periods. Prints one table; n = 1 run per row (virtual time is exact, the run
is deterministic for its seed).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.sim.sched import Scheduler
from bench.sim.world import Faults, World
from celery_master.settings import JobSettings

__all__ = ["main", "measure"]

TIMING = JobSettings(1.0, 1.0, 1.0, 3)  # the defaults


class Scale:
    def __init__(self, workers: int, locks: int, seed: int, folder: str | None) -> None:
        self.sched = Scheduler(random.Random(seed), step_cost=(0.0, 0.0005))
        self.sched.tracing = False
        self.tmp = tempfile.TemporaryDirectory(dir=folder)
        self.world = World(self.sched, Path(self.tmp.name) / "l.sqlite3", TIMING, Faults(), True)
        self.names = {f"L{i:04d}": 1 for i in range(locks)}
        self.n = workers
        self.moves: list[float] = []  # virtual time of every acquisition
        self.world.checks._acquired = self._acquired  # type: ignore[method-assign]
        member = max(TIMING.check_interval, TIMING.ttl / 2)
        self.quiet = 2 * member

    def _acquired(self, owner: str, won: dict[str, int]) -> None:
        self.moves.extend([self.sched.time] * len(won))

    def mastered(self) -> int:
        return sum(1 for w in self.world.live() for lk in w.elector.locks.values() if lk.held)

    def settle(self, began: float, limit: float) -> tuple[float, int]:
        """Run until every lock has a master and nothing moved for ``quiet``; (seconds, moves)."""
        before = len(self.moves)
        while self.sched.time < began + limit:
            self.sched.run_until(self.sched.time + 0.5)
            last = self.moves[-1] if len(self.moves) > before else began
            if self.mastered() == len(self.names) and self.sched.time - last >= self.quiet:
                return last - began, len(self.moves) - before
        return float("nan"), len(self.moves) - before

    def event(self, kind: str) -> dict[str, Any]:
        world, t0 = self.world, self.sched.time
        if kind == "cold start":
            for i in range(self.n):
                world.add_worker(f"w{i}", self.names)
        elif kind == "join":
            world.add_worker(f"w{len(world.workers)}", self.names)
        else:
            victim = max(
                world.live(), key=lambda w: sum(lk.held for lk in w.elector.locks.values())
            )
            if kind == "leave":
                victim.leaving = True
                victim.elector.begin_handover()
            else:
                victim.alive = False
                self.sched.kill(victim.owner)
        calls_before = Counter(world.calls)
        rows_before, ticks_before = world.rows_read, world.ticks_seen
        settled, moves = self.settle(t0, 120.0)
        calls = Counter(world.calls)
        calls.subtract(calls_before)
        ticks = max(1, calls["tick"])
        return {
            "event": kind,
            "workers": len(world.live()),
            "settled": settled,
            "moves": moves,
            "stmts/round": sum(calls.values()) / ticks,
            "rows/round": (world.rows_read - rows_before) / max(1, world.ticks_seen - ticks_before),
            "held": sorted(sum(lk.held for lk in w.elector.locks.values()) for w in world.live()),
        }


def measure(workers: int, locks: int, seed: int = 1, folder: str | None = None) -> list[dict]:
    scale = Scale(workers, locks, seed, folder)
    try:
        return [scale.event(k) for k in ("cold start", "join", "leave", "crash")]
    finally:
        scale.sched.close()
        scale.world.store.engine.dispose()
        scale.tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--shapes", default="8x16,200x2000", help="WORKERSxLOCKS,...")
    parser.add_argument("--seed", type=int, default=1)
    args, _ = parser.parse_known_args(argv)
    folder = "/dev/shm" if Path("/dev/shm").is_dir() else None
    print("the spread at scale, virtual time (default timing: heartbeat 1 s, check 1 s, ttl 4 s)")
    print(
        f"{'shape':>10} {'event':>10} {'n':>2} {'settled s':>9} {'moves':>6} "
        f"{'stmts/round':>11} {'rows/round':>10} {'max held':>8} {'wall s':>7}"
    )
    for shape in args.shapes.split(","):
        w, n = (int(x) for x in shape.split("x"))
        began = time.monotonic()
        rows = measure(w, n, args.seed, folder)
        wall = time.monotonic() - began
        for r in rows:
            print(
                f"{shape:>10} {r['event']:>10} {1:>2} {r['settled']:>9.1f} {r['moves']:>6} "
                f"{r['stmts/round']:>11.2f} {r['rows/round']:>10.1f} {r['held'][-1]:>8} "
                f"{wall:>7.0f}",
                flush=True,
            )
    return 0
