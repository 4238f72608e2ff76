"""Two apps on one PostgreSQL, workers that run different lock names: `python bench/deployments.py`.

App A runs `A1` and HA beat on one worker; app B runs `B1` on two workers
(heartbeat 0.5 s, 2 retries, check 1 s), real `celery worker` processes, one
lease database. For a window that starts 5 s after every lock first had a
master, it prints the share of the window each lock had a running master
(from the journal's start/stop of every term) and the beat slots sent, lost
and doubled. Before the per-lock spread, A1 had a master 25 % of the time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.cluster import Cluster, wait_for  # noqa: E402
from tests.support.servers import PgServer  # noqa: E402

TIMING = {
    "init_delay": 0.2,
    "check_interval": 1.0,
    "heartbeat_interval": 0.5,
    "max_heartbeat_retry_count": 2,
}
PERIOD = 1.0


def covered(cluster: Cluster, lock: str, begin: float, end: float) -> float:
    """Seconds of [begin, end] during which some term of ``lock`` was running."""
    total, cursor = 0.0, begin
    for start, stop, _pid in cluster.journal.terms(lock):
        lo, hi = max(start, cursor), min(stop, end)
        if hi > lo:
            total += hi - lo
            cursor = hi
    return total


def one_run(tmp: Path, url: str, window: float) -> dict[str, float]:
    a = Cluster.create(tmp / "a", url, locks="A1", **TIMING)
    b = Cluster.create(tmp / "b", url, locks="B1", **TIMING)
    for cluster, name in ((a, "A"), (b, "B")):
        cluster.dir.mkdir(parents=True, exist_ok=True)
        cluster.env["CELERY_MASTER_APP_NAME"] = name
    try:
        a.extra_args = ["--master-beat"]
        a.start_worker("a1")
        b.start_workers(2)

        def beat_sends() -> list[float]:
            return sorted(e["t"] for e in a.journal.events("send"))

        wait_for(lambda: a.master_pid("A1") and b.master_pid("B1") and beat_sends(), 60, "masters")
        begin = time.time() + 5
        time.sleep(5 + window)
        end = begin + window
        sends = [t for t in beat_sends() if begin <= t <= end]
        gaps = [y - x for x, y in zip([begin, *sends], [*sends, end], strict=False)]
        return {
            "A1": covered(a, "A1", begin, end) / window,
            "B1": covered(b, "B1", begin, end) / window,
            "beat sends": len(sends),
            "beat lost": sum(round(g / PERIOD) - 1 for g in gaps[1:-1] if g > 1.5 * PERIOD),
            "beat doubled": sum(1 for g in gaps[1:-1] if g < PERIOD / 2),
        }
    finally:
        a.close()
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=40.0)
    args = parser.parse_args()
    pg = PgServer()
    results = []
    try:
        for i in range(args.runs):
            with pg.janitor(f"hetero_{i}") as _db, tempfile.TemporaryDirectory() as tmp:
                print(f"run {i + 1} ...", flush=True)
                results.append(one_run(Path(tmp), pg.url(f"hetero_{i}"), args.window))
    finally:
        pg.close()
    print(
        f"\ntwo apps on one PostgreSQL: A runs A1 + HA beat on 1 worker, B runs B1 on 2 "
        f"workers (heartbeat 0.5 s x 2, check 1 s); {args.window:.0f} s window, n = {args.runs}"
    )
    print(f"{'measure':<22}{'median':>9}{'min':>9}{'max':>9}")
    for key in results[0]:
        values = [r[key] for r in results]
        fmt = "{:9.4f}" if key in ("A1", "B1") else "{:9.0f}"
        label = f"availability {key}" if key in ("A1", "B1") else key
        print(
            f"{label:<22}"
            + fmt.format(statistics.median(values))
            + fmt.format(min(values))
            + fmt.format(max(values))
        )
    print("availability: share of the window with a running master (journal start..stop)")


if __name__ == "__main__":
    main()
