"""Crash, graceful and database-outage failover times with real workers: `python bench/failover.py`.

For each lease database (SQLite file, PostgreSQL) and each number of lock
names, runs a 3-worker cluster (solo pool, filesystem broker, default timing:
heartbeat 1 s x 3 retries -> ttl 4 s, check 1 s) and repeats:

* crash:    kill -9 of the master -> each lock name's next start() (wall time
            from the kill; bound ttl + check_interval + a round trip ~ 5 s)
* graceful: SIGTERM of the master -> from its stop() to the next start()
* outage:   (PostgreSQL) the server stopped for a ttl under the master -> from
            the server's restart to the next start() of every lock name;
            outage-stop: from the server's stop to the master's stop() (must
            stay below the ttl: the job ends before its lease could expire)

Prints one table (median, min, max) and writes a timeline PNG with --png.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cluster import Cluster, wait_for  # noqa: E402
from tests.support.servers import PgServer, RedisServer  # noqa: E402

DEFAULTS = {
    "init_delay": 1.0,
    "check_interval": 1.0,
    "heartbeat_interval": 1.0,
    "max_heartbeat_retry_count": 3,
}


def lock_names(n: int) -> list[str]:
    return ["JOB-SCHEDULER"] if n == 1 else [f"LOCK-{i:02d}" for i in range(n)]


def holder_of(cluster: Cluster, names: list[str]) -> int:
    pids = [cluster.master_pid(n) for n in names]
    return max(set(pids), key=pids.count)  # the worker holding most names


def first_after(
    cluster: Cluster, kind: str, names: list[str], after: float, timeout: float
) -> list[float]:
    """Each lock name's first ``kind`` (start, stop) after ``after``, waited for however late:
    a late stop() is the finding, never cut at a fixed sleep."""

    def found() -> list[float] | None:
        times = []
        for name in names:
            later = [e["t"] for e in cluster.journal.events(kind, name) if e["t"] > after]
            if not later:
                return None
            times.append(min(later))
        return times

    return wait_for(found, timeout, f"every lock name's next {kind}()", 0.02)


DURABLE = "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"  # PostgreSQL's defaults


def run(
    db: str,
    n_locks: int,
    repeats: int,
    scenarios: list[str],
    tmp: Path,
    marks: list[tuple[str, str, float, float]],
    broker: str | None = None,
    timing: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    server = PgServer(extra=DURABLE) if db == "postgresql" else None
    url = server.url() if server else f"sqlite:///{tmp / f'{db}-{n_locks}.sqlite3'}"
    names = lock_names(n_locks)
    sub = tmp / f"{db}-{n_locks}"
    sub.mkdir()
    cluster = Cluster.create(
        sub, url, broker_url=broker, locks=",".join(names), **(timing or DEFAULTS)
    )
    cluster.env["JOURNAL_TICK"] = "1.0"
    results: dict[str, list[float]] = {s: [] for s in scenarios}
    killed: dict[int, float] = {}
    try:
        cluster.start_workers(3)
        wait_for(lambda: all(cluster.master_pid(n) for n in names), 30, "masters", 0.05)
        for scenario in scenarios:
            if scenario == "outage" and server is None:
                continue
            for _ in range(repeats):
                time.sleep(1.5)  # a few renewals: a steady state
                wait_for(lambda: all(cluster.master_pid(n) for n in names), 60, "masters", 0.05)
                pid = holder_of(cluster, names)
                mine = [n for n in names if cluster.master_pid(n) == pid]
                if scenario == "crash":
                    at = cluster.signal(pid, signal.SIGKILL)
                    starts = first_after(cluster, "start", mine, at, 60)
                    results[scenario] += [t - at for t in starts]
                elif scenario == "graceful":
                    at = cluster.signal(pid, signal.SIGTERM)
                    starts = first_after(cluster, "start", mine, at, 60)
                    stops = {
                        e["lock"]: e["t"] for e in cluster.journal.events("stop") if e["pid"] == pid
                    }
                    results[scenario] += [t - stops[n] for n, t in zip(mine, starts, strict=True)]
                else:
                    assert server is not None
                    down = time.time()
                    server.stop()
                    stops = first_after(cluster, "stop", names, down, 3 * cluster.ttl + 10)
                    results.setdefault("outage-stop", []).extend(t - down for t in stops)
                    time.sleep(max(0.0, down + cluster.ttl - time.time()))  # down for a ttl
                    at = time.time()  # a new master may start before pg_ctl returns
                    server.start()
                    starts = first_after(cluster, "start", names, at, 60)
                    results[scenario] += [max(0.0, t - at) for t in starts]
                marks.append((f"{db}/{n_locks}", scenario, at, max(starts)))
                if scenario != "outage":
                    cluster.worker(pid).proc.wait(30)
                    cluster.start_worker()
                if scenario == "crash":
                    killed[pid] = at
                for name in names:
                    cluster.journal.assert_no_overlap(name, ends=killed)
    finally:
        cluster.close()
        if server:
            server.close()
    return results


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values):7.3f} {min(values):7.3f} {max(values):7.3f} {len(values):4d}"
    )


def draw(marks: list[tuple[str, str, float, float]], path: Path, crash_bound: float) -> None:
    """``crash_bound``: ttl + check interval of the run's timing, drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.35 * len(marks)))
    colors = {"crash": "tab:red", "graceful": "tab:green", "outage": "tab:orange"}
    for i, (label, scenario, at, end) in enumerate(marks):
        ax.barh(i, end - at, color=colors[scenario])
        ax.text(end - at + 0.05, i, f"{label} {scenario} {end - at:.2f}s", va="center", fontsize=7)
    ax.axvline(crash_bound, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(
        "seconds from fault (crash: kill -9; graceful: SIGTERM; outage: DB back) "
        f"to the last new master; dashed: ttl + check interval ({crash_bound:g} s)"
    )
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--locks", default="1", help="comma-separated lock-name counts")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--scenarios", default="crash,graceful,outage")
    parser.add_argument("--png", type=Path, help="write a timeline picture here")
    parser.add_argument("--keep", action="store_true", help="keep journals and worker logs")
    parser.add_argument("--broker", choices=["filesystem", "redis"], default="filesystem")
    parser.add_argument("--check", type=float, help="check interval (default: 1 s)")
    args = parser.parse_args()
    marks: list[tuple[str, str, float, float]] = []
    rows = []
    timing = {**DEFAULTS, **({"check_interval": args.check} if args.check else {})}
    ttl = timing["heartbeat_interval"] * (timing["max_heartbeat_retry_count"] + 1)
    redis = RedisServer() if args.broker == "redis" else None
    keep = contextlib.nullcontext(tempfile.mkdtemp(prefix="cm-bench-"))
    with keep if args.keep else tempfile.TemporaryDirectory(prefix="cm-bench-") as tmp:
        print(f"working in {tmp}", flush=True)
        for db in args.db.split(","):
            for n in (int(x) for x in args.locks.split(",")):
                res = run(
                    db,
                    n,
                    args.repeats,
                    args.scenarios.split(","),
                    Path(tmp),
                    marks,
                    redis.url if redis else None,
                    timing,
                )
                rows += [(db, n, s, v) for s, v in res.items() if v]
    if redis is not None:
        redis.close()
    print(
        f"\nfailover time in seconds (3 workers, solo pool, {args.broker} broker, check "
        f"{timing['check_interval']:g} s, heartbeat 1 s x 3 retries; PostgreSQL durable)"
    )
    print(
        f"{'database':<11}{'locks':>6}  {'scenario':<12} {'median':>7} {'min':>7} {'max':>7}"
        f" {'n':>4}"
    )
    for db, n, scenario, values in rows:
        print(f"{db:<11}{n:>6}  {scenario:<12} {fmt(values)}")
    print(
        "crash: kill -9 -> new start(); graceful: old stop() -> new start(); outage: DB "
        "restarted -> new start(); outage-stop: DB stopped -> old stop() (must stay below "
        f"the ttl, {ttl:g} s); no overlap seen"
    )
    if args.png:
        draw(marks, args.png, ttl + timing["check_interval"])
        print(f"timeline written to {args.png}")


if __name__ == "__main__":
    main()
