"""Chaos soak: real workers under random faults from a seeded schedule: `python bench/chaos.py`.

Faults: kill -9, SIGTERM, SIGSTOP past the lease then SIGCONT, a worker
restarted under the same node name, PostgreSQL stopped, its connections
killed (pg_terminate_backend), the lease table locked for longer than the
lease (a slow database), the Redis broker stopped, and storms of
disable/enable/release. Every master job journals its start, stop and a tick
every 0.2 s (with is_master()), and makes a fenced write each tick.

It prints faults by kind; overlaps (a tick claiming mastership after a newer
epoch of the same lock had started); fenced writes accepted from a stale
epoch; availability per lock (share of 1 s bins with a master, outside each
fault's allowed failover window); failover percentiles per fault kind; lost
control commands (a master still running 2 ttl after a disable); ERROR lines
in the worker logs; worker crashes. `--seed` makes the schedule reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from tests.support.cluster import Cluster, wait_for  # noqa: E402
from tests.support.servers import PgServer, RedisServer  # noqa: E402

FAST = {
    "init_delay": 0.2,
    "check_interval": 0.5,
    "heartbeat_interval": 0.5,
    "max_heartbeat_retry_count": 2,
}
PROCESS = ["kill9", "sigterm", "sigstop", "restart"]
DATABASE = ["db_stop", "db_kill_conns", "db_slow"]
ALL = [*PROCESS, *DATABASE, "broker_stop", "control_storm"]


class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.pg = PgServer() if args.db == "postgresql" else None
        self.redis = RedisServer() if args.broker == "redis" else None
        url = self.pg.url() if self.pg else f"sqlite:///{tmp / 'leases.sqlite3'}"
        self.locks = [f"CHAOS-{i}" for i in range(args.locks)]
        timing = FAST if args.fast else {}
        self.cluster = Cluster.create(
            tmp,
            url,
            broker_url=self.redis.url if self.redis else None,
            locks=",".join(self.locks),
            **timing,
        )
        self.cluster.env.update(JOURNAL_FENCED="1", JOURNAL_TICK="0.2")
        self.ttl = self.cluster.ttl
        self.check = self.cluster.setting("check_interval", 1.0)
        self.url = url
        self.faults: list[tuple[str, float, float]] = []  # kind, at, allowed window
        self.failovers: dict[str, list[float]] = defaultdict(list)
        self.pending: list[tuple[float, Any]] = []
        self.killed: dict[int, float] = {}
        self.signalled: set[int] = set()
        self.disabled: dict[str, float] = {}
        self.control_windows: list[tuple[str, float, float]] = []
        self.kinds = [
            k for k in ALL if (k not in DATABASE or self.pg) and (k != "broker_stop" or self.redis)
        ]

    # -- faults ---------------------------------------------------------------
    def victim(self) -> tuple[str, int] | None:
        lock = self.rng.choice(self.locks)
        pid = self.cluster.master_pid(lock)
        return (lock, pid) if pid else None

    def later(self, delay: float, action: Any) -> None:
        self.pending.append((time.monotonic() + delay, action))

    def restart(self, worker: Any, delay: float) -> None:
        """Start the same node name again once the old process has gone (never blocks:
        a SIGCONT due meanwhile must still be sent)."""

        def again() -> None:
            if worker.alive():
                self.later(0.2, again)
            else:
                self.cluster.start_worker(worker.name)

        self.later(delay, again)

    def inject(self, kind: str) -> None:
        at = time.time()
        allowed = self.ttl + self.check + 2
        if kind in PROCESS:
            found = self.victim()
            if found is None:
                return
            lock, pid = found
            worker = self.cluster.worker(pid)
            self.signalled.add(pid)
            if kind == "kill9":
                os.kill(pid, signal.SIGKILL)
                self.killed[pid] = at
                self.restart(worker, self.rng.uniform(0.5, 2))
            elif kind in ("sigterm", "restart"):
                os.kill(pid, signal.SIGTERM)
                self.restart(worker, 0.1 if kind == "restart" else self.rng.uniform(0.5, 2))
            else:
                os.kill(pid, signal.SIGSTOP)
                pause = self.ttl + self.rng.uniform(0.5, 2)
                self.later(pause, lambda: os.kill(pid, signal.SIGCONT))
                allowed += pause
            self.track_failover(kind, lock, pid, at)
        elif kind == "db_stop":
            assert self.pg is not None
            down = self.rng.uniform(1, 2 * self.ttl)
            self.pg.stop()
            self.later(down, self.pg.start)
            allowed += down
        elif kind == "db_kill_conns":
            self.admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'celery-master' AND pid <> pg_backend_pid()"
            )
        elif kind == "db_slow":
            hold = self.ttl + 1
            self.hold_lock(hold)
            allowed += hold
        elif kind == "broker_stop":
            assert self.redis is not None
            self.redis.proc.send_signal(signal.SIGSTOP)
            down = self.rng.uniform(1, 3)
            self.later(down, lambda: self.redis.proc.send_signal(signal.SIGCONT))
        elif kind == "control_storm":
            self.storm()
            allowed = 0
        self.faults.append((kind, at, allowed))

    def track_failover(self, kind: str, lock: str, pid: int, at: float) -> None:
        def measure() -> None:
            starts = [
                s["t"] for s in self.cluster.journal.starts(lock) if s["t"] > at and s["pid"] != pid
            ]
            if starts:
                self.failovers[kind].append(min(starts) - at)

        self.later(self.ttl * 3 + self.check + 5, measure)

    def admin(self, sql: str) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        except sa.exc.SQLAlchemyError:
            pass  # the database may be down right now: that fault overlaps another
        engine.dispose()

    def hold_lock(self, seconds: float) -> None:
        """A slow database: the lease table locked by someone else for longer than the lease."""
        script = (
            "import sqlalchemy as sa, sys, time\n"
            "e = sa.create_engine(sys.argv[1])\n"
            "with e.begin() as c:\n"
            "    c.execute(sa.text('LOCK TABLE celery_master_lease IN ACCESS EXCLUSIVE MODE'))\n"
            "    time.sleep(float(sys.argv[2]))\n"
        )
        subprocess.Popen(
            [sys.executable, "-c", script, self.url, str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def storm(self) -> None:
        for _ in range(self.rng.randint(3, 6)):
            lock = self.rng.choice(self.locks)
            action = self.rng.choice(["disable", "enable", "release"])
            words = [action, lock] + (["--reason", "chaos"] if action == "disable" else [])
            issued = time.time()  # a window ends when the enable is *issued*: it may apply early
            result = self.cluster.celery("master", *words, timeout=60)
            if action == "disable" and result.returncode == 0:
                self.disabled.setdefault(lock, time.time())  # ... and starts once applied
            elif action == "enable" and lock in self.disabled and result.returncode == 0:
                self.control_windows.append((lock, self.disabled.pop(lock), issued))
        self.later(self.rng.uniform(1, 3), self.enable_all)

    def enable_all(self) -> None:
        for lock in list(self.disabled):
            issued = time.time()
            if self.cluster.celery("master", "enable", lock, timeout=60).returncode == 0:
                self.control_windows.append((lock, self.disabled.pop(lock), issued))
        if self.disabled:  # the database was down: the operator tries again
            self.later(1.0, self.enable_all)

    # -- the run ----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            self.cluster.start_workers(self.args.workers)
            wait_for(lambda: all(self.cluster.master_pid(n) for n in self.locks), 60, "masters")
            began = time.time()
            end = time.monotonic() + self.args.duration
            next_fault = time.monotonic() + self.rng.uniform(1, self.args.every)
            while time.monotonic() < end or self.pending:
                now = time.monotonic()
                for item in [p for p in self.pending if p[0] <= now]:
                    self.pending.remove(item)
                    try:
                        item[1]()
                    except Exception as exc:  # a recovery racing another fault
                        print(f"recovery failed: {exc!r}", flush=True)
                if now >= next_fault and now < end:
                    self.inject(self.rng.choice(self.kinds))
                    next_fault = now + self.rng.expovariate(1 / self.args.every)
                time.sleep(0.05)
            time.sleep(self.ttl * 2 + self.check)
            finished = time.time()
            crashes = [
                w.name
                for w in self.cluster.workers
                if w.proc.poll() is not None and w.pid not in self.signalled
            ]
            for w in self.cluster.workers:
                if w.alive():
                    w.proc.send_signal(signal.SIGTERM)
            for w in self.cluster.workers:
                try:
                    w.proc.wait(60)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
            return self.report(began, finished, crashes)
        finally:
            self.cluster.close()
            if self.pg:
                self.pg.close()
            if self.redis:
                self.redis.close()

    def report(self, began: float, finished: float, crashes: list[str]) -> dict[str, Any]:
        journal = self.cluster.journal
        overlaps = 0
        for lock in self.locks:
            starts = {s["epoch"]: s["t"] for s in journal.starts(lock)}
            for tick in journal.events("tick", lock):
                newer = [t for ep, t in starts.items() if ep > tick["epoch"]]
                if tick["is_master"] and newer and tick["at"] >= min(newer):
                    overlaps += 1
        stale = self.stale_fenced_writes()
        availability = {}
        for lock in self.locks:
            bins = {int(t["at"]) for t in journal.events("tick", lock) if t["is_master"]}
            excluded = set()
            for _kind, at, allowed in self.faults:
                excluded |= set(range(int(at), int(at + allowed) + 1))
            for name, off, on in self.control_windows:
                if name == lock:
                    excluded |= set(range(int(off), int(on + self.ttl + self.check) + 2))
            counted = [b for b in range(int(began) + 1, int(finished)) if b not in excluded]
            availability[lock] = sum(b in bins for b in counted) / max(1, len(counted))
        lost = 0
        for lock, off, on in self.control_windows:
            late = [
                t
                for t in journal.events("tick", lock)
                if t["is_master"] and off + 2 * self.ttl < t["at"] < on
            ]
            lost += bool(late)
        error_lines = [
            line
            for w in self.cluster.workers
            for line in w.log_text().splitlines()
            if "ERROR/" in line or "CRITICAL/" in line
        ]
        samples = sorted({line.split("] ", 1)[-1][:160] for line in error_lines})[:8]
        return {
            "seed": self.args.seed,
            "duration": round(finished - began, 1),
            "workers": self.args.workers,
            "locks": len(self.locks),
            "db": self.args.db,
            "broker": self.args.broker,
            "faults": dict(Counter(k for k, _, _ in self.faults)),
            "overlaps": overlaps,
            "stale_fenced_writes_accepted": stale,
            "fenced_writes": self.count_fenced(),
            "availability": {k: round(v, 4) for k, v in availability.items()},
            "failover": {k: self.percentiles(v) for k, v in self.failovers.items()},
            "lost_control_commands": lost,
            "error_lines": len(error_lines),
            "error_samples": samples,
            "control_windows": self.control_windows,
            "worker_crashes": crashes,
        }

    def stale_fenced_writes(self) -> int:
        engine = sa.create_engine(self.url)
        with engine.connect() as conn:
            acquired = conn.execute(
                sa.text(
                    "SELECT lock_name, epoch, at FROM celery_master_history "
                    "WHERE event = 'acquired'"
                )
            ).all()
            ticks = conn.execute(
                sa.text("SELECT lock_name, epoch, at FROM journal_fenced_tick")
            ).all()
        engine.dispose()
        took = defaultdict(dict)
        for lock, epoch, at in acquired:
            took[lock][epoch] = at
        stale = 0
        for lock, epoch, at in ticks:
            newer = [t for e, t in took[lock].items() if e > epoch]
            stale += bool(newer and at >= min(newer))
        return stale

    def count_fenced(self) -> int:
        engine = sa.create_engine(self.url)
        with engine.connect() as conn:
            n = conn.execute(sa.text("SELECT count(*) FROM journal_fenced_tick")).scalar_one()
        engine.dispose()
        return int(n)

    @staticmethod
    def percentiles(values: list[float]) -> dict[str, float]:
        values = sorted(values)
        if not values:
            return {}
        p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
        return {
            "n": len(values),
            "p50": round(statistics.median(values), 2),
            "p95": round(p95, 2),
            "max": round(values[-1], 2),
        }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"\nchaos soak: seed {r['seed']}, {r['duration']} s, {r['workers']} workers, "
        f"{r['locks']} locks, {r['db']} leases, {r['broker']} broker"
    )
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())))
    print(f"{'overlaps (two masters at once)':<44}{r['overlaps']}")
    print(
        f"{'stale fenced writes accepted':<44}{r['stale_fenced_writes_accepted']} "
        f"(of {r['fenced_writes']} fenced writes)"
    )
    print(f"{'lost control commands':<44}{r['lost_control_commands']}")
    print(f"{'ERROR/CRITICAL lines in worker logs':<44}{r['error_lines']}")
    for sample in r["error_samples"]:
        print(f"    {sample}")
    print(f"{'worker crashes (exits nobody caused)':<44}{len(r['worker_crashes'])}")
    avail = r["availability"].values()
    print(
        f"{'availability per lock (min / median)':<44}{min(avail):.4f} / "
        f"{statistics.median(avail):.4f}"
    )
    print(f"{'failover after':<16}{'n':>4}{'p50':>8}{'p95':>8}{'max':>8}")
    for kind, p in sorted(r["failover"].items()):
        if p:
            print(f"{kind:<16}{p['n']:>4}{p['p50']:>8.2f}{p['p95']:>8.2f}{p['max']:>8.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--locks", type=int, default=3)
    parser.add_argument("--every", type=float, default=4.0, help="mean seconds between faults")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--broker", choices=["filesystem", "redis"], default="filesystem")
    parser.add_argument("--fast", action="store_true", help="ttl 1.5 s instead of the default 4 s")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep journal and logs in this folder")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = Soak(args, args.keep).run()
    else:
        with tempfile.TemporaryDirectory(prefix="cm-chaos-") as tmp:
            report = Soak(args, Path(tmp)).run()
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return report


if __name__ == "__main__":
    main()
