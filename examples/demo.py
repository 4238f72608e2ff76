"""3 workers of examples/app.py: kill the master, hand over, stop. Run: `python examples/demo.py`.

Embedded default only (SQLite leases, filesystem broker): no server needed.
Workers boot in turn, because kombu's filesystem transport writes its exchange
files without a lock and workers booting at the same instant can crash.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from celery_master.store import LeaseStore, create_lease_engine  # noqa: E402

DATA = ROOT / ".demo"
LOCK = "HEARTBEAT"
procs: dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_worker(name: str) -> None:
    log = (DATA / f"{name}.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXAMPLE_DATA_DIR": str(DATA)}
    procs[name] = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.app",
            "worker",
            "-P",
            "solo",
            "-n",
            f"{name}@%h",
            "-l",
            "info",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "ready." not in (DATA / f"{name}.log").read_text():
        if procs[name].poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not boot; see {DATA / name}.log")
        time.sleep(0.1)
    say(f"started worker {name} (pid {procs[name].pid})")


def master(store: LeaseStore) -> tuple[str | None, int]:
    lease = store.read([LOCK]).get(LOCK)
    if lease is None or lease.holder is None:
        return None, 0
    return lease.holder.split("@", 1)[0], lease.epoch


def wait_master(store: LeaseStore, other_than: str | None, timeout: float = 30) -> tuple[str, int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        name, epoch = master(store)
        if name and name != other_than and procs[name].poll() is None:
            return name, epoch
        time.sleep(0.02)
    raise SystemExit("no master elected: see the logs in .demo/")


def acquired_at(store: LeaseStore, epoch: int) -> float:
    return next(
        h["at"] for h in store.history(LOCK) if h["event"] == "acquired" and h["epoch"] == epoch
    )


def released_at(store: LeaseStore, epoch: int) -> float:
    return next(
        h["at"] for h in store.history(LOCK) if h["event"] == "released" and h["epoch"] == epoch
    )


def main() -> None:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir()
    say("celery-master demo: 3 workers elect one master of HEARTBEAT (SQLite + filesystem broker)")
    for name in ("w1", "w2", "w3"):
        start_worker(name)
    store = LeaseStore(create_lease_engine(f"sqlite:///{DATA}/leases.sqlite3"))
    first, epoch = wait_master(store, None)
    say(f"master: {first} (epoch {epoch}); the others are standbys")
    time.sleep(2)

    say(f"kill -9 {first}: no goodbye, the lease must run out (ttl 4 s + check 1 s)")
    killed = time.time()
    procs[first].kill()
    second, epoch = wait_master(store, first)
    say(
        f"master: {second} (epoch {epoch}), {acquired_at(store, epoch) - killed:.2f} s after the "
        "kill (crash failover)"
    )
    time.sleep(2)

    say(f"SIGTERM {second}: it stops its job, frees the lease and wakes the standbys")
    old = epoch
    procs[second].send_signal(signal.SIGTERM)
    third, epoch = wait_master(store, second)
    gap = acquired_at(store, epoch) - released_at(store, old)
    say(
        f"master: {third} (epoch {epoch}), {gap * 1000:.0f} ms after {second} released "
        "(graceful hand-over)"
    )
    time.sleep(2)
    say("done; stopping the cluster (logs in .demo/)")


def shutdown() -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 20
    for proc in procs.values():
        try:
            proc.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupted)
    try:
        main()
    except KeyboardInterrupt:
        say("interrupted; stopping the cluster")
    finally:
        shutdown()
