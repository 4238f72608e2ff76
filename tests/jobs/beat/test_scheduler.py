"""HA beat settings and its scheduler on a real lease database: reconcile, set-up errors, fences."""

from __future__ import annotations

import time

import pytest
from celery import Celery

from celery_master.errors import ConfigurationError, NotMaster
from celery_master.jobs.beat.job import BeatJob, beat_settings
from celery_master.store.beat import BeatState
from tests.jobs.beat.support import (
    BEAT_LOCK,
    TIMING,
    elected,
    sends,
)
from tests.support.cluster import wait_for


def test_beat_option_on_the_worker_command_line(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, locks="", **TIMING)
    cluster.extra_args = ["--master-beat"]
    cluster.env["CELERY_MASTER_BEAT_LOCK_NAME"] = BEAT_LOCK
    (worker,) = cluster.start_workers(1)
    wait_for(lambda: len(sends(cluster)) >= 2, 30, "beat sends")
    assert repr(BEAT_LOCK) in worker.log_text()


def test_beat_and_dash_b_together_refuse_to_start(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, locks="", **TIMING)
    cluster.extra_args = ["--master-beat", "-B"]
    worker = cluster.start_worker(wait_ready=False)
    worker.proc.wait(60)
    assert worker.proc.returncode != 0
    assert "beat would run twice" in worker.log_text()
    wait_for(lambda: cluster.stray_pids() == [], 5, "no beat process outliving the worker")


def test_beat_settings_resolution_and_errors():
    assert beat_settings({"master_beat": True, "master_beat_lock_name": "b"}, None, {}) == (
        True,
        "b",
    )
    assert beat_settings({"master_beat": True}, None, {"CELERY_MASTER_BEAT": "0"})[0] is False
    assert beat_settings({}, True, {"CELERY_MASTER_BEAT": "no"})[0] is True
    with pytest.raises(ConfigurationError, match="CELERY_MASTER_BEAT"):
        beat_settings({}, None, {"CELERY_MASTER_BEAT": "maybe"})


def test_entries_added_or_removed_in_code_are_reconciled(sqlite_url):
    store, ctx = elected(sqlite_url)
    state = BeatState(store, BEAT_LOCK)
    state.reconcile(ctx, ["a", "b"])
    state.reconcile(ctx, ["b", "c"], takeover="no slot missed")
    assert set(state.load()) == {"b", "c"}
    (row,) = [h for h in store.history(BEAT_LOCK) if h["event"] == "beat-takeover"]
    assert row["detail"] == "no slot missed" and row["epoch"] == ctx.epoch


def test_a_set_up_error_fails_start_at_once_instead_of_leaving_a_beat_that_never_stops(
    sqlite_url,
):
    store, ctx = elected(sqlite_url)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE celery_master_beat")
    app = Celery("t", broker="memory://")
    app.conf.beat_schedule = {"a": {"task": "t.a", "schedule": 1.0}}
    began = time.monotonic()
    with pytest.raises(Exception, match="celery_master_beat"):
        BeatJob(app, BEAT_LOCK, store).start(ctx)
    assert time.monotonic() - began < 5


def test_a_stale_term_cannot_reserve_a_slot(sqlite_url):
    store, ctx = elected(sqlite_url)
    lease = store.read()[BEAT_LOCK]
    silent = {BEAT_LOCK: (lease.epoch, lease.renewals, lease.token)}
    assert store.acquire("new@x", [], silent, {BEAT_LOCK: 1.0})  # taken over
    assert ctx.is_master(), "by its own clock the old term still runs: only the fence knows"
    with pytest.raises(NotMaster, match="newer epoch"):
        BeatState(store, BEAT_LOCK).reserve(ctx, "a", 0.0, 99)


def test_a_slot_whose_message_cannot_be_built_is_reported_and_the_others_still_go(sqlite_url):
    """Regression: a non-broker error after the reservation (an encode error) escaped the
    tick; the slot was lost while beat/job.py said it went back, and nothing named it."""
    from kombu import Connection

    store, ctx = elected(sqlite_url)
    app = Celery("t", broker="memory://")
    app.conf.task_serializer = "json"
    app.conf.beat_schedule = {
        "bad": {"task": "t.bad", "schedule": 0.2, "args": [object()]},  # not JSON
        "good": {"task": "t.good", "schedule": 0.2},
    }
    job = BeatJob(app, BEAT_LOCK, store)
    scheduler = job._scheduler(ctx)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ctx.error is None:
            time.sleep(max(0.0, min(0.2, scheduler.tick())))
        assert ctx.error is not None and "'bad' not sent" in ctx.error, ctx.error
        for _ in range(20):  # the good entry keeps being sent alongside
            time.sleep(max(0.0, min(0.2, scheduler.tick())))
        with Connection("memory://") as conn:
            sent = conn.SimpleQueue("celery").qsize()
        assert sent >= 1, "the good entry was never sent"
        stored = BeatState(store, BEAT_LOCK).load()
        assert "bad" in stored, "the bad slot was reserved (so never sent twice)"
    finally:
        scheduler.close()
