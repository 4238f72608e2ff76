"""The spread never hands a lock to a worker that cannot take it (start() failing, a hold-off).

Regression: a worker whose start() kept failing still listed the lock in its
member row, so the heavier worker kept yielding it there; the lease then sat
free for the spread's grace, again and again.
"""

from __future__ import annotations

import time

from celery_master.election.elector import Elector, Role
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for


def fails(ctx):
    raise RuntimeError("this worker cannot run A")


def test_a_worker_whose_start_fails_is_not_handed_the_lock_again(sqlite_url):
    timing = JobSettings(0.05, 0.2, 0.5, 2)
    store = LeaseStore(create_lease_engine(sqlite_url, timeout=timing.heartbeat_interval))
    healthy = Elector(
        store,
        [
            (MasterJob("A", lambda ctx: ctx.stopping.wait(60)), timing),
            (MasterJob("B", lambda ctx: ctx.stopping.wait(60)), timing),
        ],
        Holder("good"),
    )
    healthy.start()
    try:
        wait_for(lambda: set(healthy.roles().values()) == {Role.MASTER}, 10, "A and B on good")
        broken = Elector(store, [(MasterJob("A", fails), timing)], Holder("bad"))
        broken.start()
        try:
            # the first hand-over is fair (nothing was known against it); then it fails
            wait_for(lambda: broken.locks["A"].start_failures >= 1, 20, "bad's start() to fail")
            window = 10 * healthy.round.member_period  # many looks by the spread
            watch_until = time.monotonic() + window
            while time.monotonic() < watch_until:
                time.sleep(0.1)
            yields = [
                h
                for h in store.history("A", 200)
                if h["event"] == "released" and "spread" in (h["detail"] or "")
            ]
            assert len(yields) <= 1, f"A was yielded to a failing worker {len(yields)} times"
            wait_for(lambda: healthy.roles()["A"] is Role.MASTER, 10, "A back on the good worker")
        finally:
            broken.stop(timeout=5)
    finally:
        healthy.stop(timeout=5)
