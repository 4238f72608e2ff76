"""Real ``celery worker`` processes, real signals: S1 and L1/L2/L4 as the user sees them.

Bounds are derived from the settings and generous (a shared 2-core machine);
the measured figures are in bench/failover.py.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.cluster import FAST_TIMING, wait_for

LOCK = "JOB-SCHEDULER"
TIMING = FAST_TIMING


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
    assert new["epoch"] == 2 and new["pid"] != first
    killed_again = cluster.signal(new["pid"], signal.SIGKILL)
    third = cluster.wait_new_start(killed_again, crash_bound(cluster), exclude_pid=new["pid"])
    assert third["epoch"] == 3
    cluster.journal.assert_no_overlap(LOCK, ends={first: killed_at, new["pid"]: killed_again})
    assert len({s["pid"] for s in cluster.journal.starts(LOCK)}) == 3


def test_sigterm_hands_over_at_once_even_with_a_30s_check_interval(make_cluster, db_url, broker):
    cluster = make_cluster(db_url, broker_url=broker, **{**TIMING, "check_interval": 30})
    cluster.start_workers(3)
    first = wait_for(cluster.master_pid, 10, "a first master")
    time.sleep(1)  # the standbys have looked once and now sleep for 30 s
    term_at = cluster.signal(first, signal.SIGTERM)
    new = cluster.wait_new_start(term_at, 15, exclude_pid=first)
    stop = next(e for e in cluster.journal.events("stop", LOCK) if e["pid"] == first)
    handover = new["t"] - stop["t"]
    assert 0 <= handover < 5 < 30, f"hand-over took {handover:.3f}s: the hint did not arrive"
    assert stop["is_master"] is False
    cluster.worker(first).proc.wait(30)
    assert cluster.worker(first).proc.returncode == 0, "the leaving worker exits cleanly"
    cluster.journal.assert_no_overlap(LOCK)


def test_paused_master_is_replaced_and_wakes_up_knowing_it_is_not_master(make_cluster, db_url):
    cluster = make_cluster(db_url, **TIMING)
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 10, "a first master")
    time.sleep(1)
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
    cluster.journal.assert_no_stale_tick(LOCK)
    cluster.journal.assert_no_overlap(LOCK, ends={first: paused_at})
    time.sleep(cluster.ttl)
    assert cluster.master_pid() == new["pid"], "the woken worker did not grab the lease back"
    assert cluster.worker(first).alive()


def test_database_outage_stops_the_job_before_the_lease_expires_then_recovers(make_cluster):
    from tests.support.servers import PgServer

    server = PgServer()
    try:
        timing = {**TIMING, "heartbeat_interval": 1.0}
        cluster = make_cluster(server.url(), **timing)
        cluster.start_workers(2)
        first = wait_for(cluster.master_pid, 10, "a first master")
        time.sleep(1)
        down_at = time.time()
        server.stop()
        stop = wait_for(
            lambda: [e for e in cluster.journal.events("stop", LOCK) if e["t"] > down_at],
            15,
            "the master to stop its job",
        )[0]
        assert stop["pid"] == first and stop["is_master"] is False
        assert stop["t"] - down_at < cluster.ttl, "job still ran when the lease could expire"
        assert all(w.alive() for w in cluster.workers), "workers survive the outage"
        time.sleep(cluster.ttl)
        assert not [s for s in cluster.journal.starts(LOCK) if s["t"] > down_at]
        up_at = time.time()
        server.start()
        cluster.wait_new_start(up_at, 30)
        cluster.journal.assert_no_overlap(LOCK)
        text = "".join(w.log_text() for w in cluster.workers)
        assert text.count("unreachable (") == 2, "each worker logs the outage once"
        assert "secret-pw" not in text
    finally:
        server.close()


def test_worker_serves_tasks_and_logs_the_masked_database_url(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **TIMING)
    (worker,) = cluster.start_workers(1)
    wait_for(cluster.master_pid, 10, "a master")
    log = worker.log_text()
    assert "leases in postgresql+psycopg2://postgres:***@127.0.0.1" in log
    assert "secret-pw" not in log


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_other_pools_elect_in_the_main_process_and_hand_over(make_cluster, sqlite_url, pool):
    cluster = make_cluster(sqlite_url, **{**TIMING, "check_interval": 30})
    cluster.pool = pool
    cluster.extra_args = ["-c", "2"]
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    assert first in {w.pid for w in cluster.workers}, "the job runs in the worker's main process"
    term_at = cluster.signal(first, signal.SIGTERM)
    new = cluster.wait_new_start(term_at, 15, exclude_pid=first)
    assert new["pid"] in {w.pid for w in cluster.workers}
    cluster.journal.assert_no_overlap(LOCK)
