"""Epochs never go back: ``forget`` keeps a floor, and never removes a live holder's row."""

from __future__ import annotations

import pytest

from celery_master.store import LeaseStore, create_lease_engine

TTL = {"A": 4.0}


@pytest.fixture
def store(db_url: str) -> LeaseStore:
    s = LeaseStore(create_lease_engine(db_url, timeout=5.0))
    s.ensure_schema()
    s.ensure_rows(["A"])
    return s


def elect(store: LeaseStore, holder: str) -> int:
    (epoch,) = store.acquire(holder, ["A"], {}, TTL).values()
    return epoch


def test_a_forgotten_lock_name_starts_above_every_epoch_it_had(store: LeaseStore):
    """Regression: the re-created row started at epoch 0, so a stale writer's
    ``WHERE epoch <= :epoch`` (as docs/fencing.md recommends) passed again."""
    for n in range(3):
        elect(store, f"h{n}")
        store.release(f"h{n}", {"A": n + 1})
    assert store.forget("A", "ops")
    store.ensure_rows(["A"])  # a worker that registers it again
    assert elect(store, "h9") == 4
    store.release("h9", {"A": 4})
    assert store.forget("A", "ops") and store.forget("A", "ops") is False
    store.ensure_rows(["A"])
    assert elect(store, "h10") == 5, "the floor grows, never resets"


def test_a_held_row_goes_only_with_the_value_watched_silent(store: LeaseStore):
    epoch = elect(store, "h1")
    assert store.forget("A", "ops") is False, "a held row removed without watching its holder"
    seen = store.read(["A"])["A"]
    store.renew("h1", {"A": epoch})  # the holder is alive: it renewed while we watched
    assert store.forget("A", "ops", (seen.epoch, seen.renewals)) is False
    now = store.read(["A"])["A"]
    assert store.forget("A", "ops", (now.epoch, now.renewals)), "a dead holder's row"
    store.ensure_rows(["A"])
    assert elect(store, "h2") == epoch + 1
    assert [h["event"] for h in store.history("A")][:2] == ["acquired", "forgotten"]
