"""The history table stays bounded per lock name by count, whatever the pattern of writes."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store import history as history_module
from celery_master.store.beat import BeatState
from celery_master.store.leases import HISTORY
from tests.jobs.beat.support import BEAT_LOCK, elected

KEEP = 20  # the bound, made small so a test writes a few hundred rows, not thousands


@pytest.fixture(autouse=True)
def small_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_module, "KEEP_PER_LOCK", KEEP)


def rows_per_lock(store: LeaseStore) -> dict[str, int]:
    stmt = select(HISTORY.c.lock_name, func.count()).group_by(HISTORY.c.lock_name)
    with store.engine.connect() as conn:
        return dict(conn.execute(stmt).all())  # type: ignore[arg-type]


def test_two_locks_that_always_hand_over_together_are_both_bounded(db_url):
    """Their rows land on alternate ids: a trim keyed on the id would spare one for ever."""
    store = LeaseStore(create_lease_engine(db_url, timeout=5.0))
    store.ensure_schema()
    store.ensure_rows(["A", "B"])
    for _ in range(5 * KEEP):
        won = store.acquire("h1", ["A", "B"], {}, {"A": 4.0, "B": 4.0})
        assert store.release("h1", won)
    assert rows_per_lock(store) == {"A": KEEP, "B": KEEP}
    newest = store.history("A", limit=1)[0]
    assert newest["event"] == "released", "the newest rows are the ones kept"


def test_beat_takeover_rows_are_bounded_like_every_other_row(db_url):
    store, ctx = elected(db_url)
    beat = BeatState(store, BEAT_LOCK)
    for n in range(3 * KEEP):
        beat.reconcile(ctx, ["report"], takeover=f"takeover {n}: missed slots sent once")
    assert rows_per_lock(store) == {BEAT_LOCK: KEEP}
    assert store.history(BEAT_LOCK, limit=1)[0]["detail"].startswith(f"takeover {3 * KEEP - 1}:")


def test_a_forgotten_lock_keeps_at_most_the_bound(db_url):
    store = LeaseStore(create_lease_engine(db_url, timeout=5.0))
    store.ensure_schema()
    store.ensure_rows(["OLD", "NOISY"])
    for _ in range(KEEP):
        store.release("h1", store.acquire("h1", ["OLD"], {}, {"OLD": 4.0}))
    for _ in range(2 * KEEP):  # other names' writes never trim OLD's rows
        store.release("h1", store.acquire("h1", ["NOISY"], {}, {"NOISY": 4.0}))
    assert store.forget("OLD", "ops")
    assert rows_per_lock(store)["OLD"] == KEEP
    assert store.history("OLD", limit=1)[0]["event"] == "forgotten"
