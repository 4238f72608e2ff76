"""The election loop in-process, against real lease databases; only the clock is ours."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import create_engine, event

from celery_master.election.elector import Elector, Role
from celery_master.errors import NotMaster
from celery_master.health import MAX_BACKOFF
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.leases import META
from celery_master.store.schema import SCHEMA_VERSION
from tests.support.cluster import wait_for
from tests.support.servers import PgServer

FAST = JobSettings(
    init_delay=0.05, check_interval=0.2, heartbeat_interval=0.2, max_heartbeat_retry_count=2
)
#: for tests that assert nothing moves: the master survives a 1 s stall of its process
STABLE = JobSettings(
    init_delay=0.05, check_interval=0.2, heartbeat_interval=0.5, max_heartbeat_retry_count=4
)


class Clock:
    """time.monotonic() plus an offset the test moves: a pause or a clock step."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, bool]] = []
        self.ctx = None

    def start(self, ctx) -> None:
        self.ctx = ctx
        self.events.append(("start", ctx.epoch, ctx.is_master()))

    def stop(self, ctx) -> None:
        self.events.append(("stop", ctx.epoch, ctx.is_master()))


def make(url: str, name: str, rec: Recorder, settings: JobSettings = FAST, **kw) -> Elector:
    store = LeaseStore(create_lease_engine(url, timeout=settings.heartbeat_interval))
    job = MasterJob("JOB", rec.start, rec.stop)
    return Elector(store, [(job, settings)], Holder(name), **kw)


def test_one_of_two_electors_becomes_master(db_url, electors):
    recs = [Recorder(), Recorder()]
    electors += [make(db_url, f"n{i}", r, STABLE) for i, r in enumerate(recs)]
    for e in electors:
        e.start()
    wait_for(lambda: any(e.roles()["JOB"] is Role.MASTER for e in electors), 5, "a master")
    time.sleep(STABLE.ttl * 2)  # several renewals: the standby must not take a live lease
    assert sorted(e.roles()["JOB"] for e in electors) == [Role.MASTER, Role.STANDBY]
    assert sum(len(r.events) for r in recs) == 1


def test_paused_master_loses_its_term_at_its_own_deadline(sqlite_url, electors):
    clock, rec = Clock(), Recorder()
    electors.append(make(sqlite_url, "n0", rec, clock=clock))
    electors[0].start()
    wait_for(lambda: rec.ctx is not None, 5, "master")
    assert rec.ctx.is_master()
    clock.offset += FAST.self_stop_after + 0.01  # as if SIGSTOP had frozen us that long
    assert not rec.ctx.is_master(), "is_master() must turn false with no I/O at all"
    wait_for(lambda: ("stop", 1, False) in rec.events, 5, "stop() after the deadline")


def test_shutdown_hands_over_through_the_hint_well_inside_the_ttl(db_url, electors):
    """Without the hint a standby would look again only when the ttl it watches runs out."""
    slow = JobSettings(0.05, 30.0, 1.0, 8)  # ttl 9 s; a standby looking every 30 s
    a, b = Recorder(), Recorder()
    eb = make(db_url, "b", b, slow)
    ea = make(db_url, "a", a, slow, notify=eb.wake)
    electors += [ea, eb]
    ea.start()
    wait_for(lambda: a.ctx is not None, 5, "a master")
    eb.start()
    wait_for(lambda: eb.locks["JOB"].holder_seen is not None, 5, "b to have looked once")
    began = time.monotonic()
    ea.stop()
    wait_for(lambda: b.ctx is not None, slow.ttl, "b master after a's hand-over")
    took = time.monotonic() - began
    assert took < slow.ttl / 3, f"hand-over took {took:.2f}s: b waited for the ttl, not the hint"
    assert a.events == [("start", 1, True), ("stop", 1, False)]
    assert b.events == [("start", 2, True)]


def test_start_raising_is_logged_released_and_retried_later(sqlite_url, electors, caplog):
    calls: list[float] = []

    def start(ctx):
        calls.append(time.monotonic())
        raise RuntimeError("boom")

    store = LeaseStore(create_lease_engine(sqlite_url))
    e = Elector(store, [(MasterJob("JOB", start), FAST)], Holder("n"))
    electors.append(e)
    with caplog.at_level(logging.ERROR, logger="celery_master"):
        e.start()
        wait_for(lambda: len(calls) >= 2, 10, "a second try after backoff")
    assert "start() of 'JOB' raised" in caplog.text and "boom" in caplog.text
    assert calls[1] - calls[0] >= FAST.check_interval * 2 * 0.9, "backs off before retrying"


def test_fence_refuses_a_write_from_a_stale_epoch(db_url, electors):
    a = Recorder()
    clock = Clock()
    ea = make(db_url, "a", a, clock=clock)
    electors.append(ea)
    ea.start()
    wait_for(lambda: a.ctx is not None, 5, "a master")
    engine = create_engine(db_url)
    with engine.begin() as conn:
        a.ctx.fence(conn)  # current: passes
    stale = a.ctx
    clock.offset += 3600  # a pauses past its lease; the lease is then taken at a newer epoch
    wait_for(lambda: a.ctx is not stale, 10, "a newer term")
    assert a.ctx.epoch > stale.epoch
    with engine.begin() as conn, pytest.raises(NotMaster, match="term has ended"):
        stale.fence(conn)
    stale._revoked, stale._deadline = False, float("inf")  # even if its own clock lied:
    with engine.begin() as conn, pytest.raises(NotMaster, match="newer epoch"):
        stale.fence(conn)
    engine.dispose()


def test_database_down_at_start_then_election_resumes_by_itself(electors, caplog):
    server = PgServer()
    try:
        server.stop()
        rec = Recorder()
        with caplog.at_level(logging.WARNING, logger="celery_master"):
            electors.append(make(server.url(), "n", rec))
            electors[0].start()
            time.sleep(1.5)
            assert rec.events == []
            server.start()
            wait_for(lambda: rec.ctx is not None, 15, "master once the database is back")
        down = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down) == 1, "logged once per state change, not every retry"
        assert "secret-pw" not in caplog.text
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        for e in electors:
            e.stop(timeout=3)
        electors.clear()
        server.close()


def test_runner_threads_are_named_and_start_runs_off_the_elector_thread(sqlite_url, electors):
    seen: dict[str, str] = {}
    started = threading.Event()

    def start(ctx):
        seen["thread"] = threading.current_thread().name
        started.set()

    store = LeaseStore(create_lease_engine(sqlite_url))
    electors.append(Elector(store, [(MasterJob("JOB", start), FAST)], Holder("n")))
    electors[0].start()
    assert started.wait(5)
    assert seen["thread"] == "celery-master-job-JOB"
    names = {t.name for t in threading.enumerate()}
    assert {"celery-master-elector", "celery-master-watchdog"} <= names


def test_wall_clock_far_ahead_or_behind_changes_nothing(db_url, electors, monkeypatch):
    """No decision reads the wall clock: jump it a day either way, mid-term."""
    real = time.time
    a, b = Recorder(), Recorder()
    monkeypatch.setattr(time, "time", lambda: real() + 86400)
    electors += [make(db_url, "a", a, STABLE), make(db_url, "b", b, STABLE)]
    for e in electors:
        e.start()
    wait_for(lambda: a.ctx or b.ctx, 5, "a master")
    monkeypatch.setattr(time, "time", lambda: real() - 86400)
    time.sleep(STABLE.ttl * 3)
    assert len(a.events) + len(b.events) == 1, "a wall-clock jump moved the lease"
    master = electors[0] if a.ctx else electors[1]
    master.stop()  # and the hand-over still works with the clock a day behind
    wait_for(lambda: a.ctx and b.ctx, 10, "the other elector to take over")


def test_read_only_database_is_reported_once_and_never_crashes(tmp_path, electors, caplog):
    path = tmp_path / "ro.sqlite3"
    LeaseStore(create_lease_engine(f"sqlite:///{path}")).ensure_schema()
    rec = Recorder()
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    with caplog.at_level(logging.WARNING, logger="celery_master"):
        electors.append(make(url, "n", rec))
        electors[0].start()
        time.sleep(FAST.check_interval * 6)
    assert rec.events == [] and electors[0]._thread.is_alive()
    failing = [r for r in caplog.records if "lease database" in r.getMessage()]
    assert len(failing) == 1 and "readonly" in failing[0].getMessage()


def test_a_slow_stop_holds_the_lease_until_it_returns(db_url, electors):
    """Regression (found by bench/failover.py under CPU starvation): the lease was released
    when stop() overran its bound, and a new term started while the old job still ran."""
    stopped_at: list[float] = []

    class SlowStop(Recorder):
        def stop(self, ctx) -> None:
            time.sleep(2 * slow_check.heartbeat_interval)  # past its bound, within the ttl
            stopped_at.append(time.monotonic())
            super().stop(ctx)

    a, b = SlowStop(), Recorder()
    slow_check = JobSettings(0.05, 0.2, 0.5, 3)  # bound 0.5 s, ttl 2 s
    ea = make(db_url, "a", a, slow_check)
    electors.append(ea)
    ea.start()
    wait_for(lambda: a.ctx is not None, 5, "a master")
    started_b: list[float] = []
    b.start = lambda ctx: (started_b.append(time.monotonic()), Recorder.start(b, ctx))
    eb = make(db_url, "b", b, slow_check)
    electors.append(eb)
    eb.start()
    ea.store.request_release("JOB", "test")
    ea.wake(["JOB"])
    wait_for(lambda: started_b, 20, "b to take over once a's stop() returned")
    assert stopped_at and started_b[0] >= stopped_at[0], "b started while a's job still ran"
    assert len(a.events) == 2, "a did not start a second term meanwhile"


def count_transactions(store: LeaseStore) -> list[int]:
    seen = [0]
    event.listen(store.engine, "begin", lambda conn: seen.__setitem__(0, seen[0] + 1))
    return seen


def test_one_transaction_per_round_whatever_the_number_of_lock_names(pg_url, electors):
    """Two workers holding 3 lock names each: one transaction per heartbeat each, not 3."""
    timing = JobSettings(0.05, 1.0, 0.5, 4)
    names = [f"L{i}" for i in range(6)]
    for node in ("a", "b"):
        store = LeaseStore(create_lease_engine(pg_url, timeout=timing.heartbeat_interval))
        jobs = [(MasterJob(n, Recorder().start), timing) for n in names]
        electors.append(Elector(store, jobs, Holder(node)))
    electors[0].start()
    wait_for(lambda: all(r is Role.MASTER for r in electors[0].roles().values()), 10, "a master")
    electors[1].start()

    def spread_evenly():
        held = [sum(r is Role.MASTER for r in e.roles().values()) for e in electors]
        return held == [3, 3] and not any(
            lk.runner is None and lk.epoch is not None for e in electors for lk in e.locks.values()
        )

    wait_for(spread_evenly, 30, "3 lock names on each worker")
    counts = [count_transactions(e.store) for e in electors]
    window = 10 * timing.heartbeat_interval
    time.sleep(window)
    assert spread_evenly(), "nothing moved in the window"
    for seen in counts:
        assert seen[0] <= window / timing.heartbeat_interval + 2, seen  # 3 names, 1 round each
        assert seen[0] >= window / timing.heartbeat_interval / 2, "renewals went on"


def test_a_term_won_after_its_deadline_is_released_unstarted(sqlite_url, electors, caplog):
    """The acquire itself took longer than the self-stop time: starting would break S1."""
    clock, rec = Clock(), Recorder()
    e = make(sqlite_url, "n", rec, clock=clock)
    late = [True]

    def slow_acquire(conn, cursor, statement, *args):
        if late[0] and "SET holder" in statement:
            late[0] = False
            clock.offset += FAST.self_stop_after + 0.1  # as if the statement hung that long

    event.listen(e.store.engine, "before_cursor_execute", slow_acquire)
    electors.append(e)
    with caplog.at_level(logging.WARNING):
        e.start()
        wait_for(lambda: rec.ctx is not None, 10, "the next, timely term")
    assert rec.ctx.epoch == 2, "the late term (epoch 1) was released, never started"
    assert rec.events == [("start", 2, True)]
    assert "too late to start" in caplog.text


def test_a_job_ending_with_not_master_does_not_grow_the_start_hold_off(sqlite_url, electors):
    starts: list[float] = []

    def start(ctx):
        starts.append(time.monotonic())
        raise NotMaster(ctx.lock_name, ctx.epoch, "the job's own fence said so")

    store = LeaseStore(create_lease_engine(sqlite_url))
    e = Elector(store, [(MasterJob("JOB", start), FAST)], Holder("n"))
    electors.append(e)
    e.start()
    wait_for(lambda: len(starts) >= 4, 10, "terms to follow each other")
    assert e.locks["JOB"].start_failures == 0
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert max(gaps) < FAST.check_interval * 2**3, f"backed off as for failures: {gaps}"


def on_schema_version(url: str, value: str, electors: list) -> tuple[Elector, Recorder, LeaseStore]:
    """An elector (not started) on a lease database whose schema_version row holds ``value``."""
    store = LeaseStore(create_lease_engine(url))
    store.ensure_schema()
    with store.engine.begin() as conn:
        conn.execute(META.update().values(value=value))
    rec = Recorder()
    electors.append(make(url, "n", rec))
    return electors[-1], rec, store


def test_a_newer_lease_schema_keeps_the_elector_out_with_one_error(sqlite_url, electors, caplog):
    e, rec, _store = on_schema_version(sqlite_url, "99", electors)
    with caplog.at_level(logging.ERROR):
        e.start()
        wait_for(lambda: not e._thread.is_alive(), 5, "the elector to stay out")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "upgrade celery-master" in errors[0].getMessage()
    assert "schema version 99" in e.snapshot()["JOB"]["last_error"]
    assert rec.events == []


def test_an_unexpected_error_in_the_loop_is_logged_and_the_election_goes_on(
    sqlite_url, electors, caplog, monkeypatch
):
    rec = Recorder()
    e = make(sqlite_url, "n", rec)
    real_update = e.spread.update
    calls = [0]

    def buggy_update(members):  # a bug in our own code, once
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug")
        real_update(members)

    monkeypatch.setattr(e.spread, "update", buggy_update)
    electors.append(e)
    with caplog.at_level(logging.ERROR):
        e.start()
        wait_for(lambda: rec.ctx is not None and calls[0] >= 2, 10, "the election to go on")
    assert "unexpected error in the election loop" in caplog.text and "a bug" in caplog.text


def test_an_unreadable_schema_version_is_one_error_and_the_elector_lives_on(
    sqlite_url, electors, caplog
):
    """A meta row that is not a version number once killed the elector thread: the worker
    served on as 'standby, last_error None' for ever."""
    e, rec, store = on_schema_version(sqlite_url, "3a", electors)
    with caplog.at_level(logging.ERROR):
        e.start()
        error = wait_for(lambda: e.snapshot()["JOB"]["last_error"], 5, "the error in the view")
        time.sleep(3 * MAX_BACKOFF)  # it looks again and again: still one line
    assert e._thread.is_alive(), "the elector died"
    assert "schema_version '3a'" in error and "celery_master_meta" in error, error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "stays out of the election" in errors[0].getMessage()
    assert rec.events == []
    with store.engine.begin() as conn:  # repaired by hand: the worker joins by itself
        conn.execute(META.update().values(value=str(SCHEMA_VERSION)))
    wait_for(lambda: rec.ctx is not None, 5 * MAX_BACKOFF, "the worker to join the election")
    assert e.snapshot()["JOB"]["last_error"] is None
