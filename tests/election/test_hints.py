"""Hints coalesce: a storm of junk hints costs the database little and delays a real one little.

The first hint after a quiet spell acts at once; under a storm, hint-driven
rounds run at most about 20 per second per worker (DESIGN.md, third round).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import event

from celery_master.election.elector import Elector, Role
from celery_master.election.round import HINT_SPACING
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for

QUIET = JobSettings(0.05, 30.0, 30.0, 3)  # nothing but hints makes a round in the window


def storm(elector: Elector, per_second: int, seconds: float, stop: threading.Event) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.is_set():
        elector.wake(["A"])
        time.sleep(1 / per_second)


def test_a_storm_of_hints_makes_at_most_one_round_per_spacing(sqlite_url):
    store = LeaseStore(create_lease_engine(sqlite_url))
    ticks: list[float] = []
    elector = Elector(store, [(MasterJob("A", lambda ctx: None), QUIET)], Holder("b"))
    store.ensure_schema()
    store.ensure_rows(["A"])
    store.acquire("a:1:x", ["A"], {}, {"A": QUIET.ttl})  # held elsewhere: hints find nothing
    elector.start()
    stop = threading.Event()
    try:
        wait_for(lambda: elector.locks["A"].holder_seen, 10, "the first look")
        event.listen(store.engine, "begin", lambda *a: ticks.append(time.monotonic()))
        seconds = 2.0
        storm(elector, 500, seconds, stop)
        rounds = len(ticks)
        assert rounds <= seconds / HINT_SPACING + 3, f"{rounds} round trips in {seconds}s"
        assert rounds >= 5, "the storm made no round at all: the test proves nothing"
    finally:
        stop.set()
        elector.stop(timeout=5)


def test_a_real_release_hands_over_well_under_a_second_under_500_hints_a_second(sqlite_url):
    store = LeaseStore(create_lease_engine(sqlite_url))
    a = Elector(store, [(MasterJob("A", lambda ctx: ctx.stopping.wait(60)), QUIET)], Holder("a"))
    a.start()
    wait_for(lambda: a.roles()["A"] is Role.MASTER, 10, "a master")
    taken: list[float] = []
    b = Elector(
        store,
        [(MasterJob("A", lambda ctx: taken.append(time.monotonic())), QUIET)],
        Holder("b"),
    )
    b.start()
    stop = threading.Event()
    junk = threading.Thread(target=storm, args=(b, 500, 30.0, stop))
    try:
        wait_for(lambda: b.locks["A"].holder_seen, 10, "b's first look")
        junk.start()
        time.sleep(0.5)  # the storm is on
        released = time.monotonic()
        a.stop(timeout=5)  # frees the lease; its hint is one more among the junk
        b.wake(["A"])
        wait_for(lambda: taken, 5, "b to take A over")
        assert taken[0] - released < 1.0, f"hand-over took {taken[0] - released:.2f}s"
    finally:
        stop.set()
        junk.join(5)
        b.stop(timeout=5)
