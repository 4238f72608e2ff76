"""The plugin's faults: a crash, a partition, a database outage, each as production would see it."""

from __future__ import annotations

import threading
import time

import pytest
from celery import Celery

import celery_master
from celery_master.testing import FAST_TIMING, STALL, MasterCluster, MasterWorker, wait_until

HB = FAST_TIMING["heartbeat_interval"]
SELF_STOP = HB * FAST_TIMING["max_heartbeat_retry_count"]
TTL = HB * (FAST_TIMING["max_heartbeat_retry_count"] + 1)


class Journal:
    """What the job saw: when start() and stop() ran, per worker, and is_master() at stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, float, bool]] = []

    def add(self, what: str, ctx: celery_master.MasterContext) -> None:
        with self.lock:
            self.events.append((what, ctx.holder.split(":")[0], time.monotonic(), ctx.is_master()))

    def of(self, what: str, node: str) -> list[tuple[str, str, float, bool]]:
        with self.lock:
            return [e for e in self.events if e[0] == what and e[1] == node]


@pytest.fixture
def journal() -> Journal:
    return Journal()


def master_then_standby(cluster: MasterCluster) -> tuple[MasterWorker, MasterWorker]:
    """w1 elected alone, then w2 as its standby: which worker is master is not left to luck."""
    cluster.start_worker("w1")
    master = cluster.wait_for_master("JOB")
    return master, cluster.start_worker("w2")


@pytest.fixture
def master_app(journal: Journal) -> Celery:
    app = Celery("faults-test", broker="memory://", set_as_current=False)

    def start(ctx: celery_master.MasterContext) -> None:
        journal.add("start", ctx)
        ctx.stopping.wait()

    celery_master.register(app, "JOB", start, lambda ctx: journal.add("stop", ctx))
    return app


def test_a_crash_ends_the_job_at_once_and_keeps_the_lease_until_the_ttl(
    master_cluster: MasterCluster, journal: Journal
):
    w1, w2 = master_then_standby(master_cluster)
    crashed = time.monotonic()
    master_cluster.crash(w1)
    wait_until(lambda: journal.of("stop", w1.hostname), STALL, "the crashed worker's job to end")
    new = master_cluster.wait_for_master("JOB", other_than=w1)
    wait_until(lambda: journal.of("start", w2.hostname), STALL, "w2's start() to run")
    took = journal.of("start", w2.hostname)[0][2] - crashed
    assert new is w2 and took >= TTL - HB, f"taken over after {took:.2f}s: the lease was freed"
    events = [h["event"] for h in master_cluster.history("JOB")]
    assert "released" not in events, events


def test_a_partitioned_master_runs_until_its_self_stop_deadline_then_stops(
    master_cluster: MasterCluster, journal: Journal
):
    w1, w2 = master_then_standby(master_cluster)
    cut = time.monotonic()
    master_cluster.partition(w1, seconds=2 * TTL)
    wait_until(lambda: journal.of("stop", w1.hostname), SELF_STOP + STALL + 1, "w1 to stop")
    (_, _, stopped, still_master) = journal.of("stop", w1.hostname)[0]
    assert not still_master, "stop() was called while ctx.is_master() was still true"
    assert SELF_STOP - HB <= stopped - cut <= SELF_STOP + STALL, stopped - cut
    assert master_cluster.wait_for_master("JOB", other_than=w1) is w2
    wait_until(
        lambda: w1.roles().get("JOB") == "standby", 2 * TTL + STALL + 1, "w1 back as a standby"
    )


def test_a_database_outage_stops_the_job_before_the_lease_could_expire_then_recovers(
    master_cluster: MasterCluster, journal: Journal
):
    master_cluster.start_worker("w1"), master_cluster.start_worker("w2")
    w1 = master_cluster.wait_for_master("JOB")
    with master_cluster.database_outage():
        began = time.monotonic()
        wait_until(lambda: journal.of("stop", w1.hostname), TTL + STALL + 2, "the job to stop")
        assert journal.of("stop", w1.hostname)[0][2] - began <= TTL, "stopped after the ttl"
        time.sleep(HB)  # still down: nobody may start the job while the database is unreachable
        assert master_cluster.master("JOB") is None
    assert master_cluster.wait_for_master("JOB") is not None
