"""The deterministic simulation (bench/simulate.py) in the suite: every promise, many interleavings.

A fixed seed set (two processes, one per core) and one random seed, printed
so that a failure replays with ``python bench/simulate.py --seed S
--schedules 1``. A zero means something only if the faults it survived
happened: the run's own counts must show each kind of fault and each refusal.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXED = [(1, 110), (5001, 110)]  # (first seed, schedules): one process per core
#: what the fixed seeds must show happened, or their "violations 0" proves nothing
MUST_HAPPEN = [
    "crash",
    "pause",
    "stall",
    "outage",
    "graceful",
    "leave",
    "join",
    "lost-reply",
    "fail",
    "takeover-wait",
    "release",
    "disable",
    "forget",
    "dbclock",
    "late-command",
    "stale writes refused",
    "late commands refused",
    "fenced writes refused",
]


def simulate(first: int, schedules: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    return subprocess.Popen(
        [sys.executable, "bench/simulate.py", "--seed", str(first), "--schedules", str(schedules)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def counts(output: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith(("faults ", "observed ")):
            for name, n in re.findall(r"([a-zA-Z -]+?) (\d+)(?:,|$)", line.split(" ", 1)[1]):
                found[name.strip()] = found.get(name.strip(), 0) + int(n)
    return found


def test_fixed_seeds_keep_every_promise_through_every_fault():
    procs = [simulate(first, n) for first, n in FIXED]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "violations 0" in out, out[-4000:]
    seen: dict[str, int] = {}
    for out in outputs:
        for name, n in counts(out).items():
            seen[name] = seen.get(name, 0) + n
    missing = [name for name in MUST_HAPPEN if not seen.get(name)]
    assert not missing, f"these never happened, so their zero proves nothing: {missing}"
    assert not seen.get("stale writes ACCEPTED"), seen


def test_a_random_seed_keeps_every_promise():
    first = random.SystemRandom().randrange(10**6)
    print(
        f"random seeds {first}..{first + 19}: replay with "
        f"`python bench/simulate.py --seed {first} --schedules 20`"
    )
    out, _ = simulate(first, 20).communicate(timeout=600)
    assert "violations 0" in out, out[-4000:]


def test_a_seed_replays_the_same_interleaving():
    """Same seed, same steps, same faults: a violation's seed is all a replay needs."""
    runs = [simulate(7, 2).communicate(timeout=300)[0] for _ in range(2)]
    first_lines = [re.sub(r"wall [\d.]+s", "", out.splitlines()[0]) for out in runs]
    assert first_lines[0] == first_lines[1] and "steps" in first_lines[0], runs
    assert counts(runs[0]) == counts(runs[1])
