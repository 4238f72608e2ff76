"""Election load on the database, workers x lock names, booted as a rollout: bench/dbload.py.

Elector-only processes (the elector code without a Celery worker, so that 32
fit on 2 cores; they send no broadcast hints) are booted one after another;
once every lock name has a master and no lease has moved for a settle period,
the window is measured. PostgreSQL: transactions/s (commits and rollbacks, from
pg_stat_database) and statements by kind (pg_stat_statements). Both: each
process counts its own transactions. Per-worker transactions per tick:
tx/s / workers x tick, tick = min(heartbeat, check); 1.0 is one round trip
per worker per tick (a worker that holds nothing ticks at the check interval).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from celery_master.store import LeaseStore, create_lease_engine  # noqa: E402
from tests.support.servers import PgServer  # noqa: E402

KINDS = {  # statement kinds, by the start of their text
    "renew": "UPDATE celery_master_lease SET renewals",
    "acquire": "UPDATE celery_master_lease SET holder",
    "read": "SELECT celery_master_lease",
    "member": "INSERT INTO celery_master_member",
    "members": "SELECT celery_master_member",
    "history": "INSERT INTO celery_master_history",
}


def pg_counters(admin: sa.Engine, dbname: str) -> tuple[float, Counter]:
    with admin.connect() as conn:
        xact = conn.execute(
            sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
            {"d": dbname},
        ).scalar_one()
        rows = conn.execute(
            sa.text(
                "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d "
                "ON d.oid = s.dbid WHERE d.datname = :d"
            ),
            {"d": dbname},
        ).all()
    kinds: Counter = Counter()
    for query, calls in rows:
        kind = next((k for k, prefix in KINDS.items() if query.startswith(prefix)), "other")
        kinds[kind] += calls
    return float(xact), kinds


def client_counters(files: list[Path]) -> tuple[float, float, list[int]]:
    tx = cpu = 0.0
    held = []
    for f in files:
        data = json.loads(f.read_text())
        tx += data["tx"]
        cpu += data["cpu"]
        held.append(data["held"])
    return tx, cpu, held


def settle(store: LeaseStore, locks: int, quiet: float, timeout: float) -> float:
    """Wait until every lock name has a master and no lease moved for ``quiet`` seconds."""
    began = time.monotonic()
    last, since = None, time.monotonic()
    while time.monotonic() - began < timeout:
        leases = store.read()
        state = tuple(sorted((n, lease.holder, lease.epoch) for n, lease in leases.items()))
        complete = len(leases) == locks and all(lease.holder for lease in leases.values())
        if state != last or not complete:
            last, since = state, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return time.monotonic() - began
        time.sleep(0.1)
    return float("nan")


def run(url: str, workers: int, locks: int, args: argparse.Namespace, admin, tmp: Path) -> dict:
    files = [tmp / f"count-{i}.json" for i in range(workers)]
    procs = []
    store = LeaseStore(create_lease_engine(url, timeout=5))
    try:
        for i in range(workers):  # booted in turn, as a rollout does
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "elector_proc.py"),
                        url,
                        str(locks),
                        f"e{i}@bench",
                        str(args.heartbeat),
                        str(args.check),
                        str(files[i]),
                    ],
                    cwd=ROOT,
                    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                )
            )
            deadline = time.monotonic() + 30
            while not files[i].exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(args.stagger)
        settled = settle(store, locks, quiet=args.quiet, timeout=120)
        dbname = url.rsplit("/", 1)[1]
        start = pg_counters(admin, dbname) if admin is not None else None
        c0 = client_counters(files)
        epochs0 = {n: lease.epoch for n, lease in store.read().items()}
        t0 = time.monotonic()
        time.sleep(args.window)
        elapsed = time.monotonic() - t0
        c1 = client_counters(files)
        end = pg_counters(admin, dbname) if admin is not None else None
        moved = sum(lease.epoch != epochs0[n] for n, lease in store.read().items())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        store.engine.dispose()
    tick = min(args.heartbeat, args.check)
    row = {
        "settled": settled,
        "tx_client": (c1[0] - c0[0]) / elapsed,
        "cpu_pct": 100 * (c1[1] - c0[1]) / elapsed / workers,
        "held_max": max(c1[2]),
        "moved": moved,
    }
    row["tx_server"] = (end[0] - start[0]) / elapsed if start and end else None
    row["kinds"] = (
        {k: (end[1][k] - start[1][k]) / elapsed for k in end[1]} if start and end else None
    )
    tx = row["tx_server"] if row["tx_server"] is not None else row["tx_client"]
    row["per_tick"] = tx / workers * tick
    row["bound"] = workers / tick
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,8,32")
    parser.add_argument("--locks", default="1,16,64")
    parser.add_argument("--db", default="postgresql,sqlite")
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--check", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds with no move = settled")
    parser.add_argument("--stagger", type=float, default=0.3, help="seconds between boots")
    args = parser.parse_args()
    rows = []
    pg = PgServer(extra="-c shared_preload_libraries=pg_stat_statements")
    try:
        admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        with tempfile.TemporaryDirectory(prefix="cm-dbload-") as tmp_name:
            for db in args.db.split(","):
                for w in (int(x) for x in args.workers.split(",")):
                    for n in (int(x) for x in args.locks.split(",")):
                        name = f"load_{w}_{n}"
                        tmp = Path(tmp_name) / f"{db}-{name}"
                        tmp.mkdir()
                        if db == "postgresql":
                            with admin.connect() as conn:
                                conn.execute(sa.text(f"CREATE DATABASE {name}"))
                            url = pg.url(name)
                        else:
                            url = f"sqlite:///{tmp}/{name}.sqlite3"
                        print(f"{db} {w} workers x {n} locks ...", flush=True)
                        eng = admin if db == "postgresql" else None
                        rows.append((db, w, n, run(url, w, n, args, eng, tmp)))
    finally:
        pg.close()
    print(
        f"\nelection load at steady state (heartbeat {args.heartbeat} s, check {args.check} s; "
        f"elector-only processes booted in turn; {args.window:.0f} s window after settling)"
    )
    print(
        f"{'database':<11}{'workers':>7}{'locks':>6}{'tx/s':>8}{'bound':>7}{'tx/tick/wkr':>12}"
        f"{'renew/s':>8}{'read/s':>7}{'member/s':>9}{'cpu%/wkr':>9}{'max held':>9}{'moved':>6}"
        f"{'settle s':>9}"
    )
    for db, w, n, r in rows:
        k = r["kinds"] or {}
        tx = r["tx_server"] if r["tx_server"] is not None else r["tx_client"]
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
        print(
            f"{db:<11}{w:>7}{n:>6}{tx:8.1f}{r['bound']:7.0f}{r['per_tick']:12.2f}"
            f"{fmt(k.get('renew')):>8}{fmt(k.get('read')):>7}{fmt(k.get('member')):>9}"
            f"{r['cpu_pct']:9.2f}{r['held_max']:>9}{r['moved']:>6}{r['settled']:9.1f}"
        )
    print(
        "tx/s: PostgreSQL's commits + rollbacks (SQLite: counted by the processes); bound: "
        "workers / tick; renew, read, member: statements/s by kind (pg_stat_statements); "
        "moved: leases whose epoch changed in the window; settle: s from the last boot until "
        f"no lease moved for {args.quiet:.0f} s"
    )
    if any(math.isnan(r["settled"]) for *_, r in rows):
        print("nan settle: the spread did not settle within 120 s")


if __name__ == "__main__":
    main()
