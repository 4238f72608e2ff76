"""Flower and event consumers see celery-master: a real Flower process, a real event receiver."""

from __future__ import annotations

import html
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from celery import Celery

from celery_master.worker.summary import render
from tests.support.cluster import FAST_TIMING, wait_for
from tests.support.servers import free_port

LOCK = "JOB-SCHEDULER"
TIMING = FAST_TIMING


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (loopback only)
        return resp.read().decode()


def test_flower_shows_the_master_field_and_survives_master_events(make_cluster, pg_url, redis_url):
    cluster = make_cluster(pg_url, broker_url=redis_url, **TIMING)
    cluster.start_workers(2)
    master_pid = wait_for(cluster.master_pid, 15, "a master")
    port = free_port()
    env = {**cluster.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.apps.journal_app",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            "--inspect_timeout=3000",  # ms: a loaded machine answers inspect slowly
        ],
        cwd=cluster.dir,
        env=env,
        stdout=(cluster.dir / "flower.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        seen: list = []

        def workers_with_field():
            try:
                data = json.loads(get(f"{base}/api/workers?refresh=1"))
            except OSError as exc:
                seen[:] = [repr(exc)]
                return None
            seen[:] = [{n: sorted(w) if isinstance(w, dict) else w for n, w in data.items()}]
            found = {
                n: w["stats"]["master"]
                for n, w in data.items()
                if isinstance(w, dict) and "master" in w.get("stats", {})
            }
            return found if len(found) == 2 else None

        try:
            fields = wait_for(workers_with_field, 60, "/api/workers to show the field", 0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last answer: {seen}") from None
        roles = sorted(f[LOCK]["role"] for f in fields.values())
        assert roles == ["master", "standby"]
        assert all("secret-pw" not in json.dumps(f) for f in fields.values())
        node = next(n for n, f in fields.items() if f[LOCK]["role"] == "master")
        other = next(n for n in fields if n != node)

        last: list[dict[str, str]] = [{}]

        def summaries() -> dict[str, str]:
            """Per worker; a worker whose inspect reply was late this time shows no stats."""
            data = json.loads(get(f"{base}/api/workers?refresh=1"))
            last[0] = {
                n: (w.get("stats") or {}).get("master_summary", "")
                for n, w in data.items()
                if isinstance(w, dict)
            }
            return last[0]

        def wait_shown(ready: Callable[[dict[str, str]], bool], what: str) -> dict[str, str]:
            """Polled: one refresh may miss a worker whose inspect reply was late."""

            def check() -> dict[str, str] | None:
                got = summaries()
                return got if ready(got) else None

            try:
                return wait_for(check, 30, what, 0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; Flower showed {last[0]}") from None

        epoch = fields[node][LOCK]["epoch"]
        shown = wait_shown(lambda got: bool(got.get(node) and got.get(other)), "both summaries")
        assert shown[node].startswith(f"master of {LOCK} (epoch {epoch}, since "), shown
        assert shown[other] == f"standby for {LOCK}", shown
        page = get(f"{base}/worker/{node}")
        assert "master_summary" in page and html.escape(shown[node]) in page, (
            "the worker page's Other tab shows the summary as text"
        )

        # a hand-over sends worker-master-* events; Flower must take them in its stride
        cluster.signal(master_pid, signal.SIGTERM)
        cluster.wait_new_start(time.time() - 1, 15, exclude_pid=master_pid)
        time.sleep(1)
        assert flower.poll() is None, (cluster.dir / "flower.log").read_text()[-2000:]

        after = wait_shown(
            lambda got: got.get(other, "").startswith(f"master of {LOCK}"), f"{other} as master"
        )
        assert f"(epoch {epoch + 1}, since " in after[other], after
        log = (cluster.dir / "flower.log").read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        flower.send_signal(signal.SIGTERM)
        flower.wait(20)


def test_role_changes_reach_event_consumers(make_cluster, pg_url, redis_url):
    cluster = make_cluster(pg_url, broker_url=redis_url, **TIMING)
    seen: list[dict] = []
    app = Celery(broker=redis_url)
    ready, done = threading.Event(), threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            recv = app.events.Receiver(
                conn,
                handlers={
                    "worker-master-elected": seen.append,
                    "worker-master-stepped-down": seen.append,
                },
            )
            ready.set()
            while not done.is_set():
                try:
                    recv.capture(limit=None, timeout=0.5, wakeup=False)
                except (TimeoutError, OSError):
                    continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10)
    time.sleep(0.5)
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a master")
    cluster.signal(first, signal.SIGTERM)
    wait_for(
        lambda: len([e for e in seen if e["type"] == "worker-master-elected"]) >= 2,
        20,
        "two elected events",
    )
    down = wait_for(
        lambda: [e for e in seen if e["type"] == "worker-master-stepped-down"],
        10,
        "a stepped-down event",
    )
    assert down[0]["lock_name"] == LOCK and down[0]["reason"] == "worker shutting down"
    assert {e["epoch"] for e in seen if e["type"] == "worker-master-elected"} == {1, 2}
    done.set()
    listener.join(10)


def test_summary_reads_as_one_line_per_worker():
    view = {
        "database": "postgresql://u:***@db/x",
        "B": {"role": "master", "epoch": 1, "since": "2026-11-26T12:04:10Z", "last_error": None},
        "A": {"role": "master", "epoch": 3, "since": "2026-11-26T12:01:02Z", "last_error": None},
        "C": {"role": "standby", "epoch": None, "since": "2026-11-26T12:00:00Z"},
        "D": {"role": "disabled", "epoch": None, "last_error": "database unreachable"},
    }
    assert render(view) == (
        "master of A (epoch 3, since 12:01:02Z), B (epoch 1, since 12:04:10Z); "
        "standby for C; disabled: D; errors: D: database unreachable"
    )
    assert render({}) == "no master jobs"
