"""Database load of the election, workers x lock names: `python bench/dbload.py`.

Runs elector-only processes (the same elector code, without a Celery worker,
so that 32 of them fit on 2 cores) with the default timing for 2 x WINDOW
seconds; the second half is measured. PostgreSQL: transactions/s from
pg_stat_database, statements/s from pg_stat_statements. Both: statements/s
counted by each process, CPU of one process (median), leases held per process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.servers import PgServer  # noqa: E402


def pg_counters(admin_url: str, dbname: str) -> tuple[float, float]:
    engine = sa.create_engine(admin_url)  # the database where pg_stat_statements lives
    with engine.connect() as conn:
        xact = conn.execute(
            sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
            {"d": dbname},
        ).scalar_one()
        calls = conn.execute(
            sa.text(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
                "ON d.oid = s.dbid WHERE d.datname = :d"
            ),
            {"d": dbname},
        ).scalar_one()
    engine.dispose()
    return float(xact), float(calls)


def run(url: str, workers: int, locks: int, window: float, admin: str | None) -> dict:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "elector_proc.py"),
                url,
                str(locks),
                str(2 * window),
                f"e{i}@bench",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        for i in range(workers)
    ]
    dbname = url.rsplit("/", 1)[1]
    time.sleep(window + 0.5)
    start = pg_counters(admin, dbname) if admin else None
    t0 = time.monotonic()
    outs = [
        json.loads(p.communicate(timeout=window * 4 + 60)[0].strip().splitlines()[-1])
        for p in procs
    ]
    elapsed = time.monotonic() - t0
    row = {
        "stmts_client": sum(o["statements"] / o["window"] for o in outs),
        "cpu_pct": 100 * statistics.median(o["cpu"] / o["window"] for o in outs),
        "held_max": max(o["held"] for o in outs),
        "held_total": sum(o["held"] for o in outs),
    }
    if start is not None and admin:
        end = pg_counters(admin, dbname)
        row["tx_server"] = (end[0] - start[0]) / elapsed
        row["stmts_server"] = (end[1] - start[1]) / elapsed
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="2,8,32")
    parser.add_argument("--locks", default="1,16,64")
    parser.add_argument("--db", default="postgresql,sqlite")
    parser.add_argument("--window", type=float, default=8.0)
    args = parser.parse_args()
    rows = []
    pg = PgServer(extra="-c shared_preload_libraries=pg_stat_statements")
    try:
        admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        with tempfile.TemporaryDirectory(prefix="cm-dbload-") as tmp:
            for db in args.db.split(","):
                for w in (int(x) for x in args.workers.split(",")):
                    for n in (int(x) for x in args.locks.split(",")):
                        name = f"load_{w}_{n}"
                        if db == "postgresql":
                            with admin.connect() as conn:
                                conn.execute(sa.text(f"CREATE DATABASE {name}"))
                            url = pg.url(name)
                        else:
                            url = f"sqlite:///{tmp}/{name}.sqlite3"
                        print(f"{db} {w} workers x {n} locks ...", flush=True)
                        admin_url = pg.url() if db == "postgresql" else None
                        rows.append((db, w, n, run(url, w, n, args.window, admin_url)))
    finally:
        pg.close()
    print(
        "\nelection load at steady state (default timing: check 1 s, heartbeat 1 s; "
        "elector-only processes)"
    )
    print(
        f"{'database':<11}{'workers':>7}{'locks':>6}{'tx/s srv':>10}{'stmt/s srv':>11}"
        f"{'stmt/s cli':>11}{'stmt/s/wkr':>11}{'cpu %/wkr':>10}{'max held':>9}"
    )
    for db, w, n, r in rows:
        srv_tx = f"{r['tx_server']:10.1f}" if "tx_server" in r else f"{'-':>10}"
        srv_st = f"{r['stmts_server']:11.1f}" if "stmts_server" in r else f"{'-':>11}"
        print(
            f"{db:<11}{w:>7}{n:>6}{srv_tx}{srv_st}{r['stmts_client']:11.1f}"
            f"{r['stmts_client'] / w:11.2f}{r['cpu_pct']:10.2f}{r['held_max']:>9}"
        )
    print(
        "stmt/s cli: statements sent, counted in each process; srv: as PostgreSQL counted "
        "them (pg_stat_statements; the stats queries themselves run in another database)"
    )


if __name__ == "__main__":
    main()
