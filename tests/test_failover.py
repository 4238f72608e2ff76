"""Real ``celery worker`` processes, real signals: S1 and L1/L2/L4 as the user sees them.

Bounds are derived from the settings with room for a 1 s stall (a shared
2-core machine); the measured figures are in bench/failover.py.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.cluster import FAST_TIMING, wait_for
from tests.support.handover import HANDOVER, HINT_TIMING, QUIET, assert_woken, wait_read

LOCK = "JOB-SCHEDULER"
TIMING = FAST_TIMING
STALL = 1.0  # room for one scheduling stall of a loaded machine


def crash_bound(cluster) -> float:
    return 2 * (cluster.ttl + cluster.setting("check_interval", 1.0)) + 3


@pytest.fixture(params=["filesystem", "redis"])
def broker(request):
    return None if request.param == "filesystem" else request.getfixturevalue("redis_url")


def test_kill_9_of_the_master_fails_over_within_ttl_plus_check_interval(
    make_cluster, db_url, broker
):
    cluster = make_cluster(db_url, broker_url=broker, **TIMING)
    cluster.start_workers(3)
    first = wait_for(cluster.master_pid, 10, "a first master")
    killed_at = cluster.signal(first, signal.SIGKILL)
    new = cluster.wait_new_start(killed_at, crash_bound(cluster), exclude_pid=first)
    killed_again = cluster.signal(new["pid"], signal.SIGKILL)
    third = cluster.wait_new_start(killed_again, crash_bound(cluster), exclude_pid=new["pid"])
    assert third["pid"] not in (first, new["pid"])
    cluster.journal.assert_epochs_grow(LOCK)
    cluster.journal.assert_no_overlap(LOCK, ends={first: killed_at, new["pid"]: killed_again})
    assert len({s["pid"] for s in cluster.journal.starts(LOCK)}) == 3


def test_sigterm_hands_over_by_the_hint_not_by_polling(make_cluster, db_url, broker):
    cluster = make_cluster(db_url, broker_url=broker, **HINT_TIMING)
    booted = time.time()  # no worker reads the lease before this, nor again before booted + QUIET
    cluster.start_workers(3)
    first = wait_for(cluster.master_pid, 10, "a first master")
    wait_read(cluster, LOCK, cluster.worker(first))
    term_at = cluster.signal(first, signal.SIGTERM)
    new = cluster.wait_new_start(term_at, 2 * QUIET, exclude_pid=first)
    stop = next(e for e in cluster.journal.events("stop", LOCK) if e["pid"] == first)
    handover = new["t"] - stop["t"]
    assert 0 <= handover < HANDOVER, f"hand-over took {handover:.3f}s"
    assert_woken(cluster, new, booted, LOCK)
    assert stop["is_master"] is False
    cluster.worker(first).proc.wait(30)
    assert cluster.worker(first).proc.returncode == 0, "the leaving worker exits cleanly"
    cluster.journal.assert_no_overlap(LOCK)


def test_paused_master_is_replaced_and_wakes_up_knowing_it_is_not_master(make_cluster, db_url):
    cluster = make_cluster(db_url, **TIMING)
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 10, "a first master")
    wait_for(lambda: len(cluster.journal.events("tick", LOCK)) >= 3, 10, "the job to tick")
    paused_at = cluster.signal(first, signal.SIGSTOP)
    new = cluster.wait_new_start(paused_at, crash_bound(cluster), exclude_pid=first)
    # the last renewal may have been sent up to one heartbeat before the pause
    silence = cluster.ttl - cluster.setting("heartbeat_interval", 1.0)
    assert new["t"] - paused_at >= silence, "took over before a full ttl of silence"
    cluster.signal(first, signal.SIGCONT)
    stop = wait_for(
        lambda: [e for e in cluster.journal.events("stop", LOCK) if e["pid"] == first],
        10,
        "the woken master to call stop()",
    )[0]
    assert stop["is_master"] is False and stop["t"] > new["t"]
    # the woken worker is a standby now: give it a ttl and a check to misbehave in
    time.sleep(cluster.ttl + cluster.setting("check_interval", 1.0) + STALL)
    again = [s for s in cluster.journal.starts(LOCK) if s["pid"] == first and s["t"] > paused_at]
    assert not again, f"the woken worker grabbed the lease back: {again}"
    assert cluster.lease_holder_pid(LOCK) == new["pid"], "the lease row names the new master"
    cluster.journal.assert_no_stale_tick(LOCK)
    cluster.journal.assert_no_overlap(LOCK, ends={first: paused_at})
    assert cluster.worker(first).alive()


def test_database_outage_stops_the_job_before_the_lease_expires_then_recovers(make_cluster):
    from tests.support.servers import PgServer

    server = PgServer()
    try:
        timing = {**TIMING, "heartbeat_interval": 1.0}
        cluster = make_cluster(server.url(), **timing)
        cluster.start_workers(2)
        first = wait_for(cluster.master_pid, 10, "a first master")
        wait_for(lambda: len(cluster.journal.events("tick", LOCK)) >= 3, 10, "the job to tick")
        down_at = time.time()
        server.stop()
        # the term ends self_stop_after (hb x retries) after the last renewal was sent,
        # which was at most down_at; stop() is called then, plus a stall
        self_stop = timing["heartbeat_interval"] * timing["max_heartbeat_retry_count"]
        stop = wait_for(
            lambda: [e for e in cluster.journal.events("stop", LOCK) if e["t"] > down_at],
            self_stop + 10,
            "the master to stop its job",
        )[0]
        assert stop["pid"] == first and stop["is_master"] is False
        late = stop["t"] - down_at
        assert late < self_stop + STALL, f"job stopped {late:.2f}s after the outage began"
        assert all(w.alive() for w in cluster.workers), "workers survive the outage"
        time.sleep(cluster.ttl)
        assert not [s for s in cluster.journal.starts(LOCK) if s["t"] > down_at]
        up_at = time.time()
        server.start()
        cluster.wait_new_start(up_at, 30)
        cluster.journal.assert_no_overlap(LOCK)
        cluster.journal.assert_epochs_grow(LOCK)
        text = "".join(w.log_text() for w in cluster.workers)
        assert text.count("unreachable (") == 2, "each worker logs the outage once"
        assert "secret-pw" not in text
    finally:
        server.close()


def test_master_serves_tasks_and_logs_the_masked_database_url(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **TIMING)
    (worker,) = cluster.start_workers(1)
    wait_for(cluster.master_pid, 10, "a master")
    sent = cluster.celery("call", "tests.apps.journal_app.ping")
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip().splitlines()[-1]
    wait_for(
        lambda: f"ping[{task_id}] succeeded" in worker.log_text(),
        20,
        "the master worker to execute the task",
    )
    assert cluster.master_pid() == worker.pid, "still master while serving tasks"
    log = worker.log_text()
    assert "leases in postgresql+psycopg2://postgres:***@127.0.0.1" in log
    assert "secret-pw" not in log


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_other_pools_elect_in_the_main_process_and_hand_over(make_cluster, sqlite_url, pool):
    cluster = make_cluster(sqlite_url, **TIMING)
    cluster.pool = pool
    cluster.extra_args = ["-c", "2"]
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    assert first in {w.pid for w in cluster.workers}, "the job runs in the worker's main process"
    term_at = cluster.signal(first, signal.SIGTERM)
    new = cluster.wait_new_start(term_at, 15, exclude_pid=first)
    assert new["pid"] in {w.pid for w in cluster.workers}
    cluster.journal.assert_no_overlap(LOCK)
