"""Deterministic simulation of the election: `python bench/simulate.py --schedules N --seed S`.

Each schedule runs the package's real election (round, lock states, spread,
terms, runner, watchdog, the lease store on a real SQLite file) for a few
workers on virtual time, one thread at a time in an order drawn from the
schedule's seed, with faults at the seed's moments (bench/sim/schedule.py),
and checks every promise after each step (bench/sim/checks.py). It prints
how many schedules, steps and faults ran and ``violations 0``; on a violation
it prints the seed, the violation and the last steps before it, and exits 1.
``--seed S --schedules 1`` replays one schedule exactly. ``--scale`` prints
the spread's figures at 200 workers x 2,000 lock names (bench/sim/scale.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTHONHASHSEED") != "0":  # set iteration order is part of a replay
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])
sys.path.insert(0, str(ROOT))

from bench.sim.schedule import simulate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="the first schedule's seed")
    parser.add_argument("--duration", type=float, default=30.0, help="virtual seconds of faults")
    parser.add_argument("--trace", type=int, default=40, help="steps shown before a violation")
    parser.add_argument("--scale", action="store_true", help="the spread at scale instead")
    args, rest = parser.parse_known_args(argv)
    if args.scale:
        from bench.sim.scale import main as scale

        return scale(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    began = time.monotonic()
    steps, virtual, faults, counts = 0, 0.0, Counter[str](), Counter[str]()
    for seed in range(args.seed, args.seed + args.schedules):
        run = simulate(seed, args.duration)
        steps, virtual = steps + run.steps, virtual + run.virtual
        faults.update(kind for _, kind, _ in run.faults)
        counts.update(run.counts)
        if run.violations:
            print(
                f"VIOLATION in schedule seed {seed}: replay with "
                f"`python bench/simulate.py --seed {seed} --schedules 1`"
            )
            for v in run.violations[:5]:
                print(f"  {v}")
            print("the faults, role changes and statements before it (newest last):")
            told = [
                ln for ln in run.trace if not ln.endswith((": clock", ": event wait", ": lock"))
            ]
            for line in told[-args.trace :]:
                print(f"  {line}")
            return 1
    print(
        f"schedules {args.schedules} (seeds {args.seed}..{args.seed + args.schedules - 1}), "
        f"steps {steps}, virtual {virtual:.0f}s, wall {time.monotonic() - began:.1f}s"
    )
    print("faults " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    print("observed " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("violations 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
