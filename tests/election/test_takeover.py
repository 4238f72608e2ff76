"""A takeover that waits costs only itself: a fenced old holder never costs a worker its locks.

On PostgreSQL a takeover waits behind the old holder's fenced transaction
until its statement bound. Regression: it went in one statement with the free
names and on the elector's own thread, and its timeout sent the loop into the
database back-off, so the worker's other leases passed their deadline.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import create_engine

from celery_master.election.elector import Elector, Role
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for


def test_a_takeover_blocked_by_a_fence_never_costs_the_worker_its_other_lock(pg_url, caplog):
    timing = JobSettings(0.05, 0.5, 0.5, 3)  # ttl 2 s, self-stop after 1.5 s, statements 0.5 s
    store = LeaseStore(create_lease_engine(pg_url, timeout=timing.heartbeat_interval))
    store.ensure_schema()
    store.ensure_rows(["X", "Y"])
    (ghost_epoch,) = store.acquire("ghost:1:dead", ["X"], {}, {"X": timing.ttl}).values()
    fence_engine = create_engine(pg_url)
    ended: list[str] = []
    y = MasterJob("Y", lambda ctx: ctx.stopping.wait(60), lambda ctx: ended.append("Y"))
    x = MasterJob("X", lambda ctx: ctx.stopping.wait(60))
    elector = Elector(store, [(y, timing), (x, timing)], Holder("n"))
    caplog.set_level(logging.INFO, logger="celery_master")
    with fence_engine.connect() as conn, conn.begin() as tx:
        # the old holder's job sits in a fenced transaction: a takeover of X waits on it
        assert store.fence(conn, "X", ghost_epoch, "ghost:1:dead", hold_ms=60_000)
        elector.start()
        try:
            wait_for(lambda: elector.roles()["Y"] is Role.MASTER, 10, "Y to have a master")
            y_epoch = store.read(["Y"])["Y"].epoch
            watch_until = time.monotonic() + 3 * timing.ttl + 2  # several takeovers of X
            while time.monotonic() < watch_until:
                assert ended == [], "Y's job was stopped: a blocked takeover cost it renewals"
                time.sleep(0.05)
            blocked = sum("did not go through" in r.getMessage() for r in caplog.records)
            assert blocked >= 2, "the fence never blocked a takeover: the test proves nothing"
            assert store.read(["Y"])["Y"].epoch == y_epoch, "Y changed hands"
            assert elector.roles()["X"] is Role.STANDBY
        finally:
            tx.rollback()
    try:
        wait_for(lambda: elector.roles()["X"] is Role.MASTER, 3 * timing.ttl + 5, "X taken over")
        assert ended == [] and store.read(["Y"])["Y"].epoch == y_epoch
    finally:
        elector.stop(timeout=5)
        fence_engine.dispose()
