"""The fence against a real PostgreSQL: it holds a takeover back, never the holder's renewal."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, text

from celery_master.election.elector import Elector, Role
from celery_master.errors import NotMaster
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for


@pytest.fixture
def store(pg_url: str) -> LeaseStore:
    s = LeaseStore(create_lease_engine(pg_url, timeout=5.0))
    s.ensure_schema()
    s.ensure_rows(["A"])
    s.acquire("h1", ["A"], {}, {"A": 4.0})
    return s


def test_a_fenced_transaction_holds_a_takeover_back_until_it_ends_but_not_the_renewal(
    store: LeaseStore, pg_url: str
):
    engine = create_engine(pg_url)
    taken: list[dict[str, int]] = []
    with engine.connect() as conn, conn.begin() as tx:
        assert store.fence(conn, "A", 1, "h1", hold_ms=5000)
        began = time.monotonic()
        assert store.renew("h1", {"A": 1}) == {"A": (True, False)}, "renewal blocked by the fence"
        assert time.monotonic() - began < 1.0
        seen = store.read(["A"])["A"]  # as a standby that watched a silent lease for a ttl
        thief = threading.Thread(
            target=lambda: taken.append(
                store.acquire("h2", [], {"A": (seen.epoch, seen.renewals, seen.token)}, {"A": 4})
            )
        )
        thief.start()
        time.sleep(1.0)
        assert thief.is_alive() and not taken, "the takeover did not wait for the fence"
        conn.execute(text("SELECT 1"))  # the fenced write of the job
        tx.commit()
    thief.join(10)
    assert taken == [{"A": 2}], "the takeover goes through once the fenced transaction ended"
    engine.dispose()


def test_a_fence_that_cannot_be_confirmed_raises_not_master(store: LeaseStore, pg_url: str):
    engine = create_engine(pg_url)
    with engine.connect() as blocker, blocker.begin():
        blocker.execute(text("SELECT 1 FROM celery_master_lease WHERE lock_name='A' FOR UPDATE"))
        with engine.connect() as conn, conn.begin(), pytest.raises(NotMaster, match="confirmed"):
            store.fence(conn, "A", 1, "h1", hold_ms=300)
    engine.dispose()


def test_an_idle_fenced_transaction_is_ended_and_the_job_is_told_why(
    store: LeaseStore, pg_url: str
):
    engine = create_engine(pg_url)
    with (
        engine.connect() as conn,
        pytest.raises(NotMaster, match="short and busy"),
        conn.begin(),
    ):
        store.fence(conn, "A", 1, "h1", hold_ms=300)
        time.sleep(1.5)  # idle inside the fenced transaction: the server ends it
        conn.execute(text("SELECT 1"))
    engine.dispose()


def test_a_fenced_transaction_busy_for_two_heartbeats_does_not_stop_its_own_master(pg_url):
    """Regression: FOR SHARE in the fence blocked the holder's renewals; a busy fenced
    transaction longer than the self-stop time lost the term (19 times in 20 s)."""
    timing = JobSettings(0.05, 0.5, 0.5, 3)  # self-stop after 1.5 s, ttl 2 s
    engine = create_engine(pg_url)
    done: list[int] = []
    stops: list[str] = []

    def start(ctx):
        while not ctx.stopping.is_set() and len(done) < 4:
            with engine.connect() as conn, conn.begin():
                ctx.fence(conn)
                conn.execute(text("SELECT pg_sleep(:s)"), {"s": 2 * timing.heartbeat_interval})
            done.append(ctx.epoch)

    store = LeaseStore(create_lease_engine(pg_url, timeout=timing.heartbeat_interval))
    job = MasterJob("BUSY", start, lambda ctx: stops.append("stopped"))
    elector = Elector(store, [(job, timing)], Holder("n"))
    elector.start()
    try:
        wait_for(lambda: len(done) >= 4, 30, "four busy fenced transactions")
        assert stops == [] and elector.roles()["BUSY"] is Role.MASTER
        assert done == [1, 1, 1, 1], "one term throughout"
    finally:
        elector.stop(timeout=5)
        engine.dispose()


def test_a_commit_after_the_server_ended_an_idle_fenced_transaction_raises_not_master(
    store: LeaseStore, pg_url: str
):
    """Regression: the commit's failure came out as a bare OperationalError (and a job that
    let it escape counted as a start failure) instead of the NotMaster docs/fencing.md says."""
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        tx = conn.begin()
        store.fence(conn, "A", 1, "h1", hold_ms=300)
        conn.execute(text("SELECT 1"))  # the job's write, then it idles before committing
        time.sleep(1.5)
        with pytest.raises(NotMaster, match="short and busy"):
            tx.commit()
    engine.dispose()
