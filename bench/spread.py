"""How lock names spread over workers, and how many move per event: `python bench/spread.py`.

Elector-only processes (the elector code without a Celery worker; they send
no broadcast hints, so a handed-over lease is taken at the receiver's next
look), default timing, PostgreSQL. Events: steady state with N workers, a worker joining, a
worker leaving (SIGTERM: graceful hand-over) and a worker crashing (kill -9).
After each event it waits until every lock name has a master and no worker is
above ceil(M/N) + 1, then prints leases per worker and the moves it took.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from celery_master.holder import Holder  # noqa: E402
from celery_master.store import LeaseStore, create_lease_engine  # noqa: E402
from tests.support.servers import PgServer  # noqa: E402


def start(url: str, locks: int, name: str, tmp: Path) -> subprocess.Popen:  # type: ignore[type-arg]
    counter = str(tmp / f"{name}.json")
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "elector_proc.py"),
            url,
            str(locks),
            name,
            "1",
            "1",
            counter,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def held(store: LeaseStore) -> tuple[Counter, int]:
    leases = store.read()
    count = Counter(Holder.node_of(lease.holder) for lease in leases.values() if lease.holder)
    return count, sum(1 for lease in leases.values() if not lease.holder)


def acquisitions(store: LeaseStore) -> int:
    return sum(
        1 for lk in store.read() for h in store.history(lk, 1000) if h["event"] == "acquired"
    )


def settle(store: LeaseStore, locks: int, workers: int, timeout: float = 60) -> float:
    began = time.monotonic()
    bound = math.ceil(locks / workers) + 1
    stable_since = None
    while time.monotonic() - began < timeout:
        count, free = held(store)
        ok = free == 0 and len(count) == workers and max(count.values()) <= bound
        if ok and stable_since is None:
            stable_since = time.monotonic()
        if not ok:
            stable_since = None
        if stable_since and time.monotonic() - stable_since > 5:  # held for 5 s: no flapping
            return stable_since - began
        time.sleep(0.2)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--locks", type=int, default=16)
    args = parser.parse_args()
    pg = PgServer()
    procs: dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="cm-spread-"))
    try:
        url = pg.url()
        store = LeaseStore(create_lease_engine(url, timeout=5))
        for i in range(args.workers):
            procs[f"e{i}@bench"] = start(url, args.locks, f"e{i}@bench", tmp)
            time.sleep(0.5)
        time.sleep(3)
        events = [
            ("steady", None),
            ("join", "add"),
            ("leave", signal.SIGTERM),
            ("crash", signal.SIGKILL),
        ]
        for event, action in events:
            before = acquisitions(store)
            if action == "add":
                name = f"e{len(procs)}@bench"
                procs[name] = start(url, args.locks, name, tmp)
            elif action is not None:
                victim = held(store)[0].most_common(1)[0][0]
                procs.pop(victim).send_signal(action)
            live = len(procs)
            took = settle(store, args.locks, live)
            count, _ = held(store)
            rows.append(
                (
                    event,
                    live,
                    took,
                    acquisitions(store) - before,
                    sorted(count.values(), reverse=True),
                )
            )
    finally:
        for proc in procs.values():
            proc.kill()
        pg.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nspread of {args.locks} lock names (default timing; bound ceil(M/N)+1)")
    print(f"{'event':<8}{'workers':>8}{'settled in s':>13}{'moves':>7}  leases per worker")
    for event, live, took, moves, per in rows:
        bound = math.ceil(args.locks / live) + 1
        print(f"{event:<8}{live:>8}{took:13.1f}{moves:>7}  {per} (bound {bound})")
    print(
        "settled: every lock name has a master and none is above the bound, for 5 s; "
        "moves: acquisitions during the event (a crash's include the takeovers)"
    )


if __name__ == "__main__":
    main()
