"""HA beat on real workers, brokers, databases: one sender, no slot twice, faults ridden out."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from celery import Celery

from celery_master.beat.job import BeatJob, beat_settings
from celery_master.errors import ConfigurationError, NotMaster
from celery_master.job import MasterContext
from celery_master.settings import resolve_beat_misfire
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.beat import BeatState
from tests.support.cluster import FAST_TIMING, wait_for
from tests.support.servers import free_port

TIMING = FAST_TIMING
PERIOD = 1.0
BEAT_LOCK = "celery-beat"


def beat_cluster(make_cluster, url: str, **settings: float):
    cluster = make_cluster(url, locks="", **{**TIMING, **settings})
    cluster.env["CELERY_MASTER_BEAT"] = "1"
    cluster.env["CELERY_MASTER_BEAT_LOCK_NAME"] = BEAT_LOCK
    return cluster


def sends(cluster) -> list[dict]:
    """Slots the broker accepted, one per task id (a retried publish keeps its id)."""
    seen: dict[str, dict] = {}
    for e in sorted(cluster.journal.events("published"), key=lambda e: e["t"]):
        seen.setdefault(e["id"], e)
    return sorted(seen.values(), key=lambda e: e["t"])


def assert_no_duplicate_slot(events: list[dict], period: float = PERIOD) -> None:
    for a, b in zip(events, events[1:], strict=False):
        assert b["t"] - a["t"] > period / 2, f"one slot sent twice: {a} and {b}"


def assert_one_sender_at_a_time(events: list[dict]) -> None:
    order = [e["pid"] for e in events]
    runs = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
    assert len(runs) == len(set(runs)), f"senders interleave: {runs}"


def assert_epochs_grow_with_senders(events: list[dict]) -> None:
    """Each sender stamps its own term's epoch; a later sender has a newer one."""
    epochs = [e["epoch"] for e in events]
    assert all(isinstance(x, int) for x in epochs), f"a send without the epoch header: {events}"
    assert epochs == sorted(epochs), f"epochs go back: {epochs}"
    by_pid = {e["pid"]: e["epoch"] for e in events}
    assert len(set(by_pid.values())) == len(by_pid), f"two senders shared an epoch: {by_pid}"


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


def takeovers(url: str) -> list[dict]:
    return [
        h
        for h in LeaseStore(create_lease_engine(url)).history(BEAT_LOCK)
        if h["event"] == "beat-takeover"
    ]


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_slots_missed_in_a_gap_follow_the_misfire_policy(make_cluster, sqlite_url, policy):
    period = 2.0
    cluster = beat_cluster(make_cluster, sqlite_url)
    cluster.env["JOURNAL_BEAT_PERIOD"] = str(period)
    cluster.env["CELERY_MASTER_BEAT_MISFIRE"] = json.dumps({"beat-tick": policy})
    (first,) = cluster.start_workers(1)
    wait_for(lambda: len(sends(cluster)) >= 1, 30, "a first send")
    killed = cluster.signal(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    wait_for(lambda: time.time() > killed + 2 * period, 3 * period, "two slots to pass")
    cluster.start_workers(1)
    wait_for(lambda: len(takeovers(sqlite_url)) >= 2, 30, "the second takeover in the history")
    latest = takeovers(sqlite_url)[0]
    assert f"missed, {policy}" in latest["detail"] and latest["detail"].startswith("beat-tick: ")
    missed = int(latest["detail"].split(": ")[1].split(" ")[0])
    assert missed >= 2, latest
    resumed = wait_for(
        lambda: [e for e in sends(cluster) if e["t"] > killed], 3 * period + 5, "sends to resume"
    )
    if policy == "once":  # the missed slots are sent once, at the takeover (room for a stall)
        assert resumed[0]["t"] - latest["at"] < 1.5, (resumed[0], latest)
        wait_for(lambda: len([e for e in sends(cluster) if e["t"] > killed]) >= 2, 10, "sends")
        second = [e for e in sends(cluster) if e["t"] > killed][1]
        assert second["t"] - resumed[0]["t"] > period * 0.9, "more than one catch-up send"
    else:  # nothing sent for the missed slots: the next one is a period after the takeover
        assert resumed[0]["t"] - latest["at"] > period * 0.9, (resumed[0], latest)
    first_epoch = sends(cluster)[0]["epoch"]
    assert latest["epoch"] == resumed[0]["epoch"] > first_epoch, "sent under the takeover's term"


def test_misfire_setting_is_validated_and_names_the_bad_policy():
    assert resolve_beat_misfire({}, {}) == {}
    assert resolve_beat_misfire({"master_beat_misfire": {"a": "skip"}}, {}) == {"a": "skip"}
    env = {"CELERY_MASTER_BEAT_MISFIRE": '{"b": "once"}'}
    assert resolve_beat_misfire({"master_beat_misfire": {"a": "skip"}}, env) == {"b": "once"}
    with pytest.raises(ConfigurationError, match="unknown misfire policy 'later' for entry 'a'"):
        resolve_beat_misfire({"master_beat_misfire": {"a": "later"}}, {})
    with pytest.raises(ConfigurationError, match="CELERY_MASTER_BEAT_MISFIRE is not JSON"):
        resolve_beat_misfire({}, {"CELERY_MASTER_BEAT_MISFIRE": "{skip"})
    with pytest.raises(ConfigurationError, match="must map beat entry names"):
        resolve_beat_misfire({"master_beat_misfire": ["a"]}, {})


class RedisProcess:
    """A Redis of this test's own, so it can be stopped and started on the same port."""

    def __init__(self, tmp_path) -> None:
        self.port, self.dir, self.proc = free_port(), tmp_path, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        wait_for(
            lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG",
            30,
            "redis to answer",
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def test_a_publish_that_fails_is_retried_until_the_broker_answers(
    make_cluster, sqlite_url, tmp_path
):
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        cluster = beat_cluster(make_cluster, sqlite_url)
        cluster.env["JOURNAL_BROKER_URL"] = redis.url
        cluster.env.pop("JOURNAL_FS_DIR", None)
        (worker,) = cluster.start_workers(1)
        wait_for(lambda: len(sends(cluster)) >= 2, 30, "beat sends")
        redis.stop()
        down = time.time()
        wait_for(  # a slot came due and failed to go out
            lambda: [e for e in cluster.journal.events("send") if e["t"] > down + PERIOD],
            10,
            "a publish attempt while the broker is down",
        )
        redis.start()
        up = time.time()
        wait_for(lambda: len([e for e in sends(cluster) if e["t"] > up]) >= 2, 15, "resumed")
        events = sends(cluster)
        assert_no_duplicate_slot(events)
        reserved = BeatState(LeaseStore(create_lease_engine(sqlite_url)), BEAT_LOCK).load()
        published = {e["id"] for e in events}
        attempted = {e["id"] for e in cluster.journal.events("send")}
        assert attempted <= published | {events[-1]["id"]}, "a reserved slot was never sent"
        assert reserved["beat-tick"].total_run_count in (len(published), len(published) + 1)
        assert all(e["epoch"] == events[0]["epoch"] for e in events)
        assert worker.alive()
        assert "broker answers again" in worker.log_text()
    finally:
        redis.stop()


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


def elected(url: str, holder: str = "h@x") -> tuple[LeaseStore, MasterContext]:
    """A term won through the real acquire statement, with the real ttl as its deadline."""
    store = LeaseStore(create_lease_engine(url))
    store.ensure_schema()
    store.ensure_rows([BEAT_LOCK])
    ttl = TIMING["heartbeat_interval"] * TIMING["max_heartbeat_retry_count"]
    sent = time.monotonic()
    (epoch,) = store.acquire(holder, [BEAT_LOCK], {}, {BEAT_LOCK: ttl}).values()
    ctx = MasterContext(
        BEAT_LOCK,
        epoch,
        holder,
        sent + ttl,
        fence=lambda conn, c: store.fence(conn, c.lock_name, c.epoch, c.holder, 1000),
    )
    return store, ctx


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
