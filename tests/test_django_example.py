"""examples/django: a real Django settings module and real `celery -A djproj worker` processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import wait_for

pytest.importorskip("django", reason="Django is part of the test extra")

PROJECT = Path(__file__).resolve().parents[1] / "examples" / "django"
TIMING = {  # ttl 1.5 s
    "CELERY_MASTER_INIT_DELAY": "0.2",
    "CELERY_MASTER_CHECK_INTERVAL": "0.5",
    "CELERY_MASTER_HEARTBEAT_INTERVAL": "0.5",
    "CELERY_MASTER_MAX_HEARTBEAT_RETRY_COUNT": "2",
}
EVERY = 0.2  # the job writes a row this often
#: a graceful hand-over takes a hint and a round trip; were the hint lost, the lease runs
#: out: ttl + check interval, the job's own interval, and a stall of a loaded machine
TAKEOVER = 0.5 * (2 + 1) + 0.5 + EVERY + 1.0
#: a worker boots in a few seconds here; twice that under load, plus a stall
BOOT = 60.0


@pytest.fixture
def project_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "DJANGO_")) and k not in ("DATABASE_URL", "BROKER_URL")
    }
    return {
        **env,
        **TIMING,
        "EXAMPLE_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "djproj.settings",
        "HEARTBEAT_EVERY": str(EVERY),
        "PYTHONPATH": str(PROJECT.parents[1]),  # celery_master itself, from this checkout
    }


@pytest.fixture
def workers(
    tmp_path: Path, project_env: dict[str, str]
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def start_worker(name: str, env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "djproj", "worker", "-P", "solo"]
        + ["-n", f"{name}@%h", "-l", "info", "--without-gossip", "--without-mingle"]
        + ["--without-heartbeat"],
        cwd=PROJECT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_for(
        lambda: "ready." in log.read_text() or proc.poll() is not None, BOOT, f"{name} to boot"
    )
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def rows(db: Path) -> list[tuple[int, str, int]]:
    with sqlite3.connect(db, timeout=5) as conn:
        return conn.execute(
            "SELECT id, holder, epoch FROM heartbeat_heartbeat ORDER BY id"
        ).fetchall()


def test_the_django_job_runs_on_one_worker_and_hands_over_at_sigterm(
    tmp_path: Path, project_env: dict[str, str], workers: dict[str, subprocess.Popen[bytes]]
):
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"],
        cwd=PROJECT,
        env=project_env,
        check=True,
        timeout=120,
    )
    db = tmp_path / "db.sqlite3"
    for name in ("w1", "w2"):
        workers[name] = start_worker(name, project_env, tmp_path)

    # both workers are up: the first election is a check interval and a round trip away
    first = wait_for(lambda: rows(db), TAKEOVER, "a heartbeat row from the master")[0]
    holder, epoch = first[1], first[2]
    master = holder.split("@", 1)[0]
    other = ({"w1", "w2"} - {master}).pop()
    wait_for(lambda: len(rows(db)) >= 3, 3 * EVERY + 1.0, "the master to keep writing")

    workers[master].send_signal(signal.SIGTERM)
    after = wait_for(
        lambda: [r for r in rows(db) if r[2] > epoch], TAKEOVER, f"{other} to take over"
    )
    assert after[0][1].startswith(f"{other}@") and after[0][2] == epoch + 1
    assert workers[master].wait(30) == 0

    # one writer at a time: the rows of one epoch never interleave with another's
    epochs = [r[2] for r in rows(db)]
    assert epochs == sorted(epochs)
    assert {r[1] for r in rows(db) if r[2] == epoch} == {holder}
    # the leases live in Django's own database
    with sqlite3.connect(db) as conn:
        (lease,) = conn.execute(
            "SELECT holder, epoch FROM celery_master_lease WHERE lock_name = 'DJANGO-HEARTBEAT'"
        ).fetchall()
    assert lease[0].startswith(f"{other}@") and lease[1] == epoch + 1
    for name in ("w1", "w2"):
        text = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
