"""Draw docs/flower-worker.png: Flower's worker page of a real cluster, in headless Chromium.

Run from the project root: ``python scripts/flower_screenshot.py [OUT.png]``.
Starts a throwaway PostgreSQL and Redis (as the tests do), two journal-app
workers with three lock names (one of them disabled), Flower, then opens the
worker page's "Other" tab in headless Chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.cluster import FAST_TIMING, Cluster, wait_for  # noqa: E402
from tests.support.servers import PgServer, RedisServer, free_port  # noqa: E402

LOCKS = "JOB-SCHEDULER,FEED-POLLER,CACHE-WARMER"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
    "--window-size=1280,900",
]


def workers(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/workers?refresh=1", timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read().decode())


def main(out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    tmp = Path(tempfile.mkdtemp(prefix="flower-shot-"))
    pg, redis = PgServer(), RedisServer()
    flower = None
    cluster = Cluster.create(tmp, pg.url(), broker_url=redis.url, locks=LOCKS, **FAST_TIMING)
    try:
        cluster.start_workers(2)
        wait_for(lambda: cluster.master_pid("CACHE-WARMER"), 20, "a master of every lock")
        done = cluster.celery("master", "disable", "CACHE-WARMER", "--reason", "maintenance")
        assert done.returncode == 0, done.stderr
        port = free_port()
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.apps.journal_app", "flower"]
            + [f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=3000"],
            cwd=tmp,
            env={**cluster.env, "FLOWER_UNAUTHENTICATED_API": "true"},
            stdout=(tmp / "flower.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"

        def busiest() -> str | None:
            try:
                found = workers(base)
            except OSError:
                return None
            lines = {n: w.get("stats", {}).get("master_summary", "") for n, w in found.items()}
            if len(lines) < 2 or not all("disabled: CACHE-WARMER" in s for s in lines.values()):
                return None
            return max(lines, key=lambda n: lines[n].count("epoch"))

        node = wait_for(busiest, 60, "Flower to show both workers' roles", 0.5)
        time.sleep(1)
        subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp / 'chromium'}",
                f"--screenshot={out}",
                f"{base}/worker/{node}#tab-other",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        print(f"{out}: worker page of {node}")
    finally:
        if flower is not None:
            flower.send_signal(signal.SIGTERM)
            flower.wait(20)
        cluster.close()
        redis.close()
        pg.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "flower-worker.png").resolve())
