"""HA beat through real failovers: one sender at a time, no slot twice, epochs grow."""

from __future__ import annotations

import signal
import time

from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.beat import BeatState
from tests.jobs.beat.support import (
    BEAT_LOCK,
    PERIOD,
    TIMING,
    assert_epochs_grow_with_senders,
    assert_no_duplicate_slot,
    assert_one_sender_at_a_time,
    beat_cluster,
    sends,
)
from tests.support.cluster import wait_for


def test_beat_moves_with_the_master_through_two_kill_9_without_a_duplicate(make_cluster, db_url):
    cluster = beat_cluster(make_cluster, db_url)
    cluster.start_workers(3)
    bound = 2 * (cluster.ttl + 0.5) + 3 + PERIOD
    killed: list[float] = []
    for _ in range(2):
        wait_for(lambda: len(sends(cluster)) >= 3 + 3 * len(killed), 30, "beat sends")
        sender = sends(cluster)[-1]["pid"]
        killed.append(cluster.signal(sender, signal.SIGKILL))
        resumed = wait_for(
            lambda: [e for e in sends(cluster) if e["t"] > killed[-1]],
            bound,
            "sends to resume on another worker",
        )
        assert resumed[0]["pid"] != sender
    wait_for(lambda: len([e for e in sends(cluster) if e["t"] > killed[-1]]) >= 3, 30, "sends")
    events = sends(cluster)
    assert_no_duplicate_slot(events)
    assert_one_sender_at_a_time(events)
    assert_epochs_grow_with_senders(events)
    assert len({e["pid"] for e in events}) == 3
    for at in killed:
        before = [e["t"] for e in events if e["t"] <= at]
        after = [e["t"] for e in events if e["t"] > at]
        assert after[0] - before[-1] - PERIOD < bound, "gap beyond the failover bound"
    store = LeaseStore(create_lease_engine(db_url))
    row = BeatState(store, BEAT_LOCK).load()["beat-tick"]
    assert row.total_run_count >= len(events) - 2, "the run count survived both failovers"
    assert row.epoch == events[-1]["epoch"], "the state was written under the sender's epoch"


def test_sigterm_hands_beat_over_without_a_duplicate(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, locks="", **TIMING)
    cluster.start_workers(2)  # no master_beat yet: two more workers opt in by environment
    assert not sends(cluster)
    for w in list(cluster.workers):
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(30)
    cluster.env["CELERY_MASTER_BEAT"] = "true"
    cluster.env["CELERY_MASTER_BEAT_LOCK_NAME"] = BEAT_LOCK
    cluster.start_workers(2)
    wait_for(lambda: len(sends(cluster)) >= 3, 30, "beat sends")
    sender = sends(cluster)[-1]["pid"]
    at = cluster.signal(sender, signal.SIGTERM)
    wait_for(lambda: len([e for e in sends(cluster) if e["t"] > at]) >= 3, 30, "new sends")
    events = sends(cluster)
    assert_no_duplicate_slot(events)
    assert_one_sender_at_a_time(events)
    after = [e for e in events if e["t"] > at and e["pid"] != sender]
    before = [e for e in events if e["pid"] == sender]
    assert after[0]["t"] - before[-1]["t"] < PERIOD + 5, "graceful hand-over left a long gap"


def test_beat_rides_out_three_short_postgresql_restarts(make_cluster, pg_server, pg_url):
    """A 1.2 s outage is shorter than the self-stop time: the slot waits, then goes out once."""
    timing = {"heartbeat_interval": 0.5, "max_heartbeat_retry_count": 6}  # self-stop after 3 s
    cluster = beat_cluster(make_cluster, pg_url, **timing)
    workers = cluster.start_workers(2)
    wait_for(lambda: len(sends(cluster)) >= 2, 30, "beat sends")
    # back within a retry (1 s) and a period; room for a failover if the restart ran long
    bound = cluster.ttl + cluster.setting("check_interval", 1) + PERIOD + 3
    for _ in range(3):
        pg_server.stop()
        time.sleep(1.2)  # the fault itself: the database is down this long
        pg_server.start()
        up = time.time()
        wait_for(
            lambda up=up: len([e for e in sends(cluster) if e["t"] > up]) >= 2,
            bound + PERIOD,
            "beat sends to resume after the restart",
        )
    events = sends(cluster)
    assert_no_duplicate_slot(events)
    assert_one_sender_at_a_time(events)
    assert all(w.alive() for w in workers), "a worker died"
    logs = "".join(w.log_text() for w in workers)
    assert "Traceback" not in logs, logs[-3000:]
    assert "lease database failing" in logs, "the blip was neither seen nor logged"
    assert "lease database answers again" in logs


def test_a_stale_master_sends_nothing_after_it_wakes(make_cluster, sqlite_url):
    cluster = beat_cluster(make_cluster, sqlite_url)
    cluster.start_workers(2)
    wait_for(lambda: len(sends(cluster)) >= 2, 30, "beat sends")
    stale = sends(cluster)[-1]["pid"]
    paused = cluster.signal(stale, signal.SIGSTOP)
    wait_for(
        lambda: [e for e in sends(cluster) if e["t"] > paused and e["pid"] != stale],
        2 * (cluster.ttl + 0.5) + 3 + PERIOD,
        "the standby to take beat over",
    )
    woke = cluster.signal(stale, signal.SIGCONT)
    wait_for(lambda: len([e for e in sends(cluster) if e["t"] > woke]) >= 3, 30, "sends")
    attempts = cluster.journal.events("send")
    assert not [e for e in attempts if e["pid"] == stale and e["t"] > woke], "a stale send"
    events = sends(cluster)
    assert_no_duplicate_slot(events)
    assert_epochs_grow_with_senders(events)
