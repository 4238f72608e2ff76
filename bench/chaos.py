"""Chaos soak: real workers under random faults from a seeded schedule: `python bench/chaos.py`.

Faults (bench/chaosfaults.py): kill -9, SIGTERM, SIGSTOP past the lease then
SIGCONT, a worker restarted under the same node name, PostgreSQL stopped,
restarted in about a second (a blip), its connections killed, the lease table
locked for longer than the lease (a slow database), the Redis broker stopped,
storms of disable/enable/release, a bare broadcast delivered late to a paused
standby, and wall-clock steps of +-1 h (libfaketime) on a worker and on the
PostgreSQL server. ``--faults`` picks them (``classic``, ``new``, ``all`` or
names). Every master job journals its start, stop and a tick every 0.2 s (with
is_master()), and makes a fenced write each tick.

``--hetero``: two apps on one PostgreSQL, HA beat on a subset of each app's
workers, unequal weights, a lock that runs on one worker only, and a ``prefer``
glob matching a node that does not run that lock. ``--beat``: HA beat on every
worker of the homogeneous cluster.

Each kind asked for runs once (in a seeded order) before any kind twice; a
late broadcast waits until every other fault's window has closed, so it is
measured alone. It prints (bench/chaosreport.py) faults by kind, and kinds
that cannot run here (e.g. broker_stop on the filesystem broker) or never got
to; overlaps; fenced writes accepted from a stale epoch (commit order) and
those the fence refused (bench/chaosevidence.py: the evidence that stale
writes were attempted); the wall-clock offsets seen on the stepped worker and
on the database server; availability of every lock (share
of 1 s bins with a master, outside each fault's failover window); beat sends
per slot (duplicates, lost slots outside failover windows); late broadcasts
(how often each release was applied, enables undone); failover percentiles; ERROR lines
(an allow-list names the expected ones); recovery failures; locks left without
a master at the end; worker crashes. `--seed` makes the schedule reproducible.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from bench import chaosreport as rep  # noqa: E402
from bench.chaosaccount import AccountingMixin  # noqa: E402
from bench.chaosfaults import CLASSIC, KINDS, NEW, FaultsMixin  # noqa: E402
from bench.chaoslayout import Layout, layout_for  # noqa: E402
from tests.support.cluster import Cluster, wait_for  # noqa: E402
from tests.support.servers import PgServer, RedisServer  # noqa: E402

FAST = {
    "init_delay": 0.2,
    "check_interval": 0.5,
    "heartbeat_interval": 0.5,
    "max_heartbeat_retry_count": 2,
}


def find_libfaketime() -> Path | None:
    """Debian's multi-threaded libfaketime, wherever the architecture puts it."""
    found = [*Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1")]
    found += [p for p in (Path("/usr/local/lib/faketime/libfaketimeMT.so.1"),) if p.exists()]
    return found[0] if found else None


FAKETIME_LIB = find_libfaketime()


def parse_faults(text: str) -> list[str]:
    groups = {"classic": CLASSIC, "new": NEW, "all": KINDS}
    kinds: list[str] = []
    for word in text.split(","):
        for kind in groups.get(word, [word]):
            if kind not in KINDS:
                raise SystemExit(f"unknown fault {kind!r}: use {', '.join(KINDS)}")
            kinds.append(kind)
    return kinds


class Soak(FaultsMixin, AccountingMixin):
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.kinds = parse_faults(args.faults)
        self.base = time.time() - time.monotonic()  # the journal timeline of every process
        self.clock_files: dict[str, Path] = {}
        clocks = {"clock_worker", "clock_db"} & set(self.kinds)
        if clocks and FAKETIME_LIB is None:
            raise SystemExit("clock faults need libfaketime: apt install faketime")
        self.pg = self.redis = None
        if args.db == "postgresql":
            self.pg = PgServer(env=self.faketime_env("db") if "clock_db" in clocks else None)
        if args.broker == "redis":
            self.redis = RedisServer()
        self.url = self.pg.url() if self.pg else f"sqlite:///{tmp / 'leases.sqlite3'}"
        self.layout: Layout = layout_for(args)
        timing = FAST if args.fast else {}
        self.clusters: dict[str, Cluster] = {}
        for app in self.layout.apps:
            sub = tmp / app.name
            sub.mkdir(parents=True, exist_ok=True)
            cluster = Cluster.create(
                sub,
                self.url,
                broker_url=self.redis.url_for(1 + len(self.clusters)) if self.redis else None,
                locks=",".join(app.locks),
                env={**app.env, "JOURNAL_CLOCK_BASE": repr(self.base)},
                **timing,
            )
            cluster.env.update(JOURNAL_FENCED="1", JOURNAL_TICK="0.2", JOURNAL_FENCE_HOLD="0.1")
            self.clusters[app.name] = cluster
        first = next(iter(self.clusters.values()))
        self.ttl, self.check = first.ttl, first.setting("check_interval", 1.0)
        self.faults: list[tuple[str, float, float]] = []
        self.failovers: dict[str, list[float]] = defaultdict(list)
        self.pending: list[tuple[float, Any]] = []
        self.killed: dict[int, float] = {}
        self.signalled: set[int] = set()
        self.paused: set[int] = set()
        self.disabled: dict[str, float] = {}
        self.control_windows: list[tuple[str, float, float]] = []
        self.late: list[dict[str, Any]] = []
        self.control_until = 0.0
        self.recovery_failures: list[str] = []
        self.quiet_until = 0.0  # a late broadcast is measured alone
        self.db_down = False
        self.beat_holders: list[tuple[float, int]] = []  # (instant, pid holding a beat lease)
        self._beat_engine: sa.Engine | None = None
        self._next_look = 0.0
        self.worker_clock = self.faketime_env("worker") if "clock_worker" in clocks else {}
        self.skipped = {k: why for k in self.kinds if (why := self.not_applicable(k))}
        self.kinds = [k for k in self.kinds if k not in self.skipped]
        self.unplayed = sorted(set(self.kinds))
        random.Random(args.seed).shuffle(self.unplayed)
        self.waiting: str | None = None
        self.db_clock_offsets: list[float] = []

    # -- plumbing used by the faults ----------------------------------------------
    def now(self) -> float:
        return time.monotonic() + self.base

    def faketime_env(self, where: str) -> dict[str, str]:
        path = self.tmp / f"faketime-{where}"
        path.write_text("+0\n")
        path.chmod(0o644)
        self.tmp.chmod(0o755)  # the PostgreSQL server's user reads it too
        self.clock_files[where] = path
        env = {
            "LD_PRELOAD": str(FAKETIME_LIB),
            "FAKETIME_TIMESTAMP_FILE": str(path),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # monotonic clocks never step
            "FAKETIME_NO_CACHE" if where == "worker" else "FAKETIME_CACHE_DURATION": "1",
        }
        if where == "worker":  # bench/faketime/sitecustomize.py: see why there
            env["PYTHONPATH"] = f"{ROOT / 'bench' / 'faketime'}{os.pathsep}{ROOT}"
        return env

    def later(self, delay: float, action: Any) -> None:
        self.pending.append((time.monotonic() + delay, action))

    def locks(self) -> list[str]:
        return [lock for app in self.layout.apps for lock in app.locks]

    def victim_locks(self) -> list[str]:
        return self.locks() + [f"beat:{a.name}" for a in self.layout.apps if a.beat_workers]

    def cluster_of(self, lock: str) -> Cluster:
        if lock.startswith("beat:"):
            return self.clusters[lock[5:]]
        return next(self.clusters[a.name] for a in self.layout.apps if lock in a.locks)

    def master_pid(self, lock: str) -> int | None:
        cluster = self.cluster_of(lock)
        if not lock.startswith("beat:"):
            return cluster.master_pid(lock)
        live = {w.pid for w in cluster.workers if w.alive()}
        recent = [e for e in cluster.journal.events("send") if e["t"] > self.now() - 3]
        return recent[-1]["pid"] if recent and recent[-1]["pid"] in live else None

    def restart(self, worker: Any, delay: float) -> None:
        """Start the same node name again once the old process has gone (never blocks)."""
        cluster = next(c for c in self.clusters.values() if worker in c.workers)

        def again() -> None:
            if worker.alive():
                self.later(0.2, again)
            else:
                cluster.start_worker(
                    worker.name, wait_ready=False, env=worker.extra_env, args=worker.extra_args
                )

        self.later(delay, again)

    def track_failover(self, kind: str, lock: str, pid: int, at: float) -> None:
        if lock.startswith("beat:"):
            return

        def measure() -> None:
            starts = [
                s["t"]
                for s in self.cluster_of(lock).journal.starts(lock)
                if s["t"] > at and s["pid"] != pid
            ]
            if starts:
                self.failovers[kind].append(min(starts) - at)

        self.later(self.ttl * 3 + self.check + 5, measure)

    # -- the run ------------------------------------------------------------------
    def boot(self) -> None:
        if self.pg is not None:
            rep.install_commit_order(self.url)
        for app in self.layout.apps:
            for spec in app.workers:
                env = dict(spec.env)
                if spec.faketime:
                    env.update(self.worker_clock)
                self.clusters[app.name].start_worker(spec.name, env=env, args=spec.args)
        wait_for(lambda: all(self.master_pid(n) for n in self.locks()), 90, "masters")

    def run_pending(self, due: float) -> None:
        for item in [p for p in self.pending if p[0] <= due]:
            self.pending.remove(item)
            try:
                item[1]()
            except Exception as exc:  # counted and reported: a soak that cannot recover fails
                self.recovery_failures.append(repr(exc)[:200])
                print(f"recovery failed: {exc!r}", flush=True)

    def run(self) -> dict[str, Any]:
        try:
            self.boot()
            began = self.now()
            end = time.monotonic() + self.args.duration
            next_fault = time.monotonic() + self.rng.uniform(1, self.args.every)
            while time.monotonic() < end or self.pending:
                now = time.monotonic()
                self.run_pending(now)
                self.observe_beat()
                quiet = self.now() < self.quiet_until
                done = self.args.each_once and not self.unplayed  # then a quiet spell to judge
                if now >= next_fault and now < end and self.kinds and not quiet and not done:
                    self.inject(self.pick())
                    next_fault = now + self.rng.expovariate(1 / self.args.every)
                time.sleep(0.05)
            for path in self.clock_files.values():
                path.write_text("+0\n")
            unrecovered = self.settle()
            finished = self.now()
            crashes = [
                w.name
                for c in self.clusters.values()
                for w in c.workers
                if w.proc.poll() is not None and w.pid not in self.signalled
            ]
            self.stop_workers()
            return self.report(began, finished, crashes, unrecovered)
        finally:
            for cluster in self.clusters.values():
                cluster.close()
            if self._beat_engine is not None:
                self._beat_engine.dispose()
            if self.pg:
                self.pg.close()
            if self.redis:
                self.redis.close()

    def observe_beat(self) -> None:
        """Who holds each beat lease, twice a second: beat accounting leaves out the terms
        of a worker whose wall clock was stepped (its beat sends by that clock)."""
        if self.now() < self._next_look or not any(a.beat_workers for a in self.layout.apps):
            return
        self._next_look = self.now() + 0.5
        if self._beat_engine is None:
            args = {"connect_timeout": 1} if self.pg else {"timeout": 0.5}
            self._beat_engine = sa.create_engine(self.url, connect_args=args)
        try:
            with self._beat_engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT holder FROM celery_master_lease "
                        "WHERE lock_name LIKE 'celery-beat%' AND holder IS NOT NULL"
                    )
                ).all()
        except sa.exc.SQLAlchemyError:
            return  # the database is down: a fault window covers this time anyway
        for (holder,) in rows:
            self.beat_holders.append((self.now(), int(holder.rsplit(":", 2)[1])))

    def settle(self) -> list[str]:
        """Locks (and beats) without a master once every fault has had its window."""
        bound = 3 * self.ttl + self.check + 10
        names = self.victim_locks()
        with contextlib.suppress(AssertionError):  # what stays masterless is the finding
            wait_for(lambda: all(self.master_pid(n) for n in names), bound, "recovery")
        time.sleep(self.ttl)  # and they keep it: the accounting ends here
        return [n for n in names if not self.master_pid(n)]

    def stop_workers(self) -> None:
        workers = [w for c in self.clusters.values() for w in c.workers]
        for w in workers:
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.proc.wait(60)
            except subprocess.TimeoutExpired:
                w.proc.kill()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--locks", type=int, default=3)
    parser.add_argument("--every", type=float, default=4.0, help="mean seconds between faults")
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--broker", choices=["filesystem", "redis"], default="filesystem")
    parser.add_argument("--faults", default="classic", help="classic, new, all, or kinds")
    parser.add_argument(
        "--each-once",
        action="store_true",
        help="inject every kind once, then none: the rest of the run is judged free of faults",
    )
    parser.add_argument("--hetero", action="store_true", help="two apps, unequal workers")
    parser.add_argument("--beat", action="store_true", help="HA beat on every worker")
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
        rep.print_report(report)
    return report


if __name__ == "__main__":
    main()
