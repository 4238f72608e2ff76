"""The election loop in-process, against real lease databases; only the clock is ours."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import create_engine

from celery_master.elector import Elector, Role
from celery_master.errors import NotMaster
from celery_master.holder import Holder
from celery_master.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for
from tests.support.servers import PgServer

FAST = JobSettings(
    init_delay=0.05, check_interval=0.2, heartbeat_interval=0.2, max_heartbeat_retry_count=2
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


@pytest.fixture
def electors():
    made: list[Elector] = []
    yield made
    for e in made:
        e.stop(timeout=3)


def test_one_of_two_electors_becomes_master(db_url, electors):
    recs = [Recorder(), Recorder()]
    electors += [make(db_url, f"n{i}", r) for i, r in enumerate(recs)]
    for e in electors:
        e.start()
    wait_for(lambda: any(e.roles()["JOB"] is Role.MASTER for e in electors), 5, "a master")
    time.sleep(FAST.ttl * 2)  # several renewals: the standby must not take a live lease
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


def test_standby_clock_jumping_ahead_never_steals_a_renewed_lease(db_url, electors):
    master, standby = Recorder(), Recorder()
    electors.append(make(db_url, "m", master))
    electors[0].start()
    wait_for(lambda: master.ctx is not None, 5, "master")
    clock = Clock()
    electors.append(make(db_url, "s", standby, clock=clock))
    electors[1].start()
    end = time.monotonic() + FAST.ttl * 3
    while time.monotonic() < end:
        clock.offset += 3600.0  # an hour per step, forwards
        time.sleep(FAST.check_interval / 2)
    assert standby.events == [] and master.ctx.is_master()


def test_shutdown_hands_over_through_the_hint_not_the_check_interval(db_url, electors):
    slow = JobSettings(0.05, 30.0, 0.2, 2)  # a standby that would only look every 30 s
    a, b = Recorder(), Recorder()
    eb = make(db_url, "b", b, slow)
    ea = make(db_url, "a", a, slow, notify=eb.wake)
    electors += [ea, eb]
    ea.start()
    wait_for(lambda: a.ctx is not None, 5, "a master")
    eb.start()
    time.sleep(0.3)  # b has looked once and now waits 30 s
    began = time.monotonic()
    ea.stop()
    wait_for(lambda: b.ctx is not None, 5, "b master after a's hand-over")
    assert time.monotonic() - began < 5 < slow.check_interval
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
    electors += [make(db_url, "a", a), make(db_url, "b", b)]
    for e in electors:
        e.start()
    wait_for(lambda: a.ctx or b.ctx, 5, "a master")
    monkeypatch.setattr(time, "time", lambda: real() - 86400)
    time.sleep(FAST.ttl * 3)
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
