"""The core failover, hand-over and control paths on RabbitMQ, Celery's default broker.

A throwaway RabbitMQ node (Debian's ``rabbitmq-server``) on free ports, with
its own epmd, data and log folders and no plugins, started by the fixture
below like the suite's PostgreSQL and Redis; real ``celery worker``
processes of the journal app, real signals.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from tests.support.cluster import FAST_TIMING, wait_for
from tests.support.handover import HANDOVER, HINT_TIMING, QUIET, RELEASE, assert_woken, wait_read
from tests.support.servers import free_port

LOCK = "JOB-SCHEDULER"


def _server_script() -> str | None:
    """The server's own start script (the Debian wrapper would switch user and folder)."""
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return found[-1] if found else shutil.which("rabbitmq-server")


class RabbitServer:
    """One RabbitMQ node on free ports; everything it writes lives in one temporary folder."""

    def __init__(self) -> None:
        script = _server_script()
        if script is None:
            raise RuntimeError("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        self.dir = Path(tempfile.mkdtemp(prefix="celery-master-rabbit-"))
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.dir),  # the Erlang cookie
            "RABBITMQ_NODENAME": f"celery-master-{self.port}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),  # none: the defaults
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "LANG": "C.UTF-8",
        }
        self.proc = subprocess.Popen(
            [script],
            cwd=self.dir,
            env=self.env,
            stdout=(self.dir / "server.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(self._answers, 90, f"RabbitMQ on port {self.port}", 0.5)
        except AssertionError:
            log = (self.dir / "server.log").read_text(errors="replace")[-3000:]
            self.close()
            raise RuntimeError(f"RabbitMQ did not start:\n{log}") from None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"rabbitmq-server exited with {self.proc.returncode}")
        try:
            with Connection(self.url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
            return True
        except Exception:
            return False

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        subprocess.run(["epmd", "-kill"], env=self.env, capture_output=True, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitServer]:
    server = RabbitServer()
    yield server
    server.close()


def crash_bound(cluster) -> float:
    return 2 * (cluster.ttl + cluster.setting("check_interval", 1.0)) + 3


def test_kill_9_of_the_master_fails_over_on_rabbitmq(make_cluster, pg_url, rabbit):
    cluster = make_cluster(pg_url, broker_url=rabbit.url, **FAST_TIMING)
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    killed_at = cluster.signal(first, signal.SIGKILL)
    new = cluster.wait_new_start(killed_at, crash_bound(cluster), exclude_pid=first)
    assert new["pid"] != first and new["epoch"] == 2
    cluster.journal.assert_no_overlap(LOCK, ends={first: killed_at})


def test_sigterm_hands_over_through_a_hint_on_rabbitmq(make_cluster, pg_url, rabbit):
    cluster = make_cluster(pg_url, broker_url=rabbit.url, **HINT_TIMING)
    booted = time.time()  # no worker has read the lease before this
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    wait_read(cluster, LOCK, cluster.worker(first))  # the standby reads again QUIET s later
    term_at = cluster.signal(first, signal.SIGTERM)
    new = cluster.wait_new_start(term_at, 2 * QUIET, exclude_pid=first)
    stop = next(e for e in cluster.journal.events("stop", LOCK) if e["pid"] == first)
    took = new["t"] - stop["t"]
    assert 0 <= took < HANDOVER, f"hand-over over RabbitMQ took {took:.3f}s"
    assert_woken(cluster, new, booted, LOCK)
    cluster.worker(first).proc.wait(30)
    assert cluster.worker(first).proc.returncode == 0
    cluster.journal.assert_no_overlap(LOCK)


def _replies(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    merged: dict = {}
    for line in result.stdout.splitlines():
        if line.startswith(("{", "[")):
            data = json.loads(line)
            for item in data if isinstance(data, list) else [data]:
                merged.update(item)
    return merged


def test_control_disable_and_enable_on_rabbitmq(make_cluster, pg_url, rabbit):
    cluster = make_cluster(pg_url, broker_url=rabbit.url, **HINT_TIMING)
    booted = time.time()
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    out = _replies(cluster.celery("control", "--json", "mastercontrol", "disable", LOCK, "rmq"))
    assert any(r.get("ok") for r in out.values()), out
    wait_for(lambda: cluster.master_pid() is None, 10, "the master to stop")
    assert [e for e in cluster.journal.events("stop", LOCK) if e["pid"] == first]
    views = _replies(cluster.celery("inspect", "--json", "master_status", LOCK))
    assert sorted(v["ok"][LOCK]["role"] for v in views.values()) == ["disabled", "disabled"]
    enabled_at = time.time()
    out = _replies(cluster.celery("control", "--json", "mastercontrol", "enable", LOCK))
    assert any(r.get("ok") for r in out.values()), out
    new = cluster.wait_new_start(enabled_at, 2 * QUIET)
    # the workers last read the lease when the disable woke them: enable must wake them too
    assert_woken(cluster, new, booted, LOCK, RELEASE, "mastercontrol")
    cluster.journal.assert_no_overlap(LOCK)
