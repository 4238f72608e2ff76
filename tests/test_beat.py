"""HA beat: one sender at a time, no slot sent twice, state kept in SQL under the epoch."""

from __future__ import annotations

import signal
import time

import pytest
from celery import Celery

from celery_master.beat import MasterScheduler
from celery_master.beat.job import beat_settings
from celery_master.errors import ConfigurationError, NotMaster
from celery_master.job import MasterContext
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.beat import BeatState
from tests.support.cluster import FAST_TIMING, wait_for

TIMING = FAST_TIMING
PERIOD = 1.0


def sends(cluster) -> list[dict]:
    return sorted(cluster.journal.events("send"), key=lambda e: e["t"])


def assert_no_duplicate_slot(events: list[dict]) -> None:
    for a, b in zip(events, events[1:], strict=False):
        assert b["t"] - a["t"] > PERIOD / 2, f"one slot sent twice: {a} and {b}"


def assert_one_sender_at_a_time(events: list[dict]) -> None:
    order = [e["pid"] for e in events]
    runs = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
    assert len(runs) == len(set(runs)), f"senders interleave: {runs}"


def test_beat_moves_with_the_master_through_two_kill_9_without_a_duplicate(make_cluster, db_url):
    cluster = make_cluster(db_url, locks="", **TIMING)
    cluster.env["CELERY_MASTER_BEAT"] = "1"
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
    assert len({e["pid"] for e in events}) == 3
    for at in killed:
        before = [e["t"] for e in events if e["t"] <= at]
        after = [e["t"] for e in events if e["t"] > at]
        assert after[0] - before[-1] - PERIOD < bound, "gap beyond the failover bound"
    store = LeaseStore(create_lease_engine(db_url))
    row = BeatState(store, "celery-beat:journal_app").load()["beat-tick"]
    assert row.total_run_count >= len(events) - 2, "the run count survived both failovers"
    assert row.epoch == 3


def test_sigterm_hands_beat_over_without_a_duplicate(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, locks="", **TIMING)
    cluster.start_workers(2)  # no master_beat yet: a third worker opts in by option
    assert not sends(cluster)
    for w in list(cluster.workers):
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(30)
    cluster.env["CELERY_MASTER_BEAT"] = "true"
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


def test_beat_option_on_the_worker_command_line(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, locks="", **TIMING)
    cluster.extra_args = ["--master-beat"]
    (worker,) = cluster.start_workers(1)
    wait_for(lambda: len(sends(cluster)) >= 2, 30, "beat sends")
    assert "'celery-beat:journal_app'" in worker.log_text()


def test_beat_and_dash_b_together_refuse_to_start(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, locks="", **TIMING)
    cluster.extra_args = ["--master-beat", "-B"]
    worker = cluster.start_worker(wait_ready=False)
    worker.proc.wait(60)
    assert worker.proc.returncode != 0
    assert "beat would run twice" in worker.log_text()
    time.sleep(1)
    assert cluster.stray_pids() == [], "no beat process may outlive the refused worker"


def test_beat_settings_resolution_and_errors():
    assert beat_settings({}, None, {}) == (False, "celery-beat")
    assert beat_settings({"master_beat": True, "master_beat_lock_name": "b"}, None, {}) == (
        True,
        "b",
    )
    assert beat_settings({"master_beat": True}, None, {"CELERY_MASTER_BEAT": "0"})[0] is False
    assert beat_settings({}, True, {"CELERY_MASTER_BEAT": "no"})[0] is True
    with pytest.raises(ConfigurationError, match="CELERY_MASTER_BEAT"):
        beat_settings({}, None, {"CELERY_MASTER_BEAT": "maybe"})


class Term:
    """A master term as the scheduler sees it, fenced against the real lease row."""

    def __init__(self, store: LeaseStore, epoch: int, holder: str) -> None:
        self.ctx = MasterContext(
            "celery-beat",
            epoch,
            holder,
            time.monotonic() + 3600,
            fence=lambda conn, ctx: store.fence(conn, ctx.lock_name, ctx.epoch, ctx.holder, 1000),
        )


def make_scheduler(store, term, schedule):
    app = Celery("t", broker="memory://")
    app.conf.beat_schedule = schedule
    sent: list[str] = []
    sched = MasterScheduler(
        app=app, ctx=term.ctx, state=BeatState(store, "celery-beat"), lazy=False
    )
    sched.apply_async = lambda entry, **kw: sent.append(entry.name)  # the broker is not ours
    return sched, sent


def test_stale_master_can_neither_write_state_nor_send(sqlite_url):
    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    store.ensure_rows(["celery-beat"])
    store.acquire("old", ["celery-beat"], {}, {"celery-beat": 4.0})
    schedule = {"a": {"task": "t.a", "schedule": 0.01}}
    old, sent_old = make_scheduler(store, Term(store, 1, "old"), schedule)
    time.sleep(0.05)
    old.tick()
    assert sent_old == ["a"]
    store.acquire(
        "new", [], {"celery-beat": (1, 0, store.read()["celery-beat"].token)}, {"celery-beat": 4.0}
    )  # taken over
    time.sleep(0.05)
    old.tick()
    assert sent_old == ["a"], "a stale master sent a task"
    new, sent_new = make_scheduler(store, Term(store, 2, "new"), schedule)
    assert new.schedule["a"].total_run_count == 1, "state survived the failover"
    with pytest.raises(NotMaster):
        BeatState(store, "celery-beat").reserve(Term(store, 1, "old").ctx, "a", 0.0, 99)


def test_entries_added_or_removed_in_code_are_reconciled(sqlite_url):
    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    store.ensure_rows(["celery-beat"])
    store.acquire("h", ["celery-beat"], {}, {"celery-beat": 4.0})
    term = Term(store, 1, "h")
    make_scheduler(
        store, term, {"a": {"task": "t.a", "schedule": 60}, "b": {"task": "t.b", "schedule": 60}}
    )
    make_scheduler(
        store, term, {"b": {"task": "t.b", "schedule": 60}, "c": {"task": "t.c", "schedule": 60}}
    )
    names = set(BeatState(store, "celery-beat").load())
    assert {"b", "c"} <= names and "a" not in names
