"""The lease statements against a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, select

from celery_master.store import LeaseStore, SchemaTooNew, create_lease_engine
from celery_master.store.leases import LEASE, META
from celery_master.store.schema import SCHEMA_VERSION


@pytest.fixture
def store(db_url: str) -> LeaseStore:
    s = LeaseStore(create_lease_engine(db_url, timeout=2.0))
    s.ensure_schema()
    s.ensure_rows(["A", "B", "Ünï 'quoted' \"name\"; DROP TABLE x"])
    return s


def test_free_leases_are_taken_at_once_and_each_acquisition_bumps_the_epoch(store: LeaseStore):
    assert store.acquire("h1", ["A", "B"], {}, {"A": 4.0, "B": 4.0}) == {"A": 1, "B": 1}
    assert store.acquire("h2", ["A"], {}, {"A": 4.0}) == {}, "a held lease is not free"
    assert store.release("h1", {"A": 1}) == ["A"]
    assert store.acquire("h2", ["A"], {}, {"A": 4.0}) == {"A": 2}
    lease = store.read(["A"])["A"]
    assert (lease.holder, lease.epoch, lease.ttl) == ("h2", 2, 4.0)


def test_silent_lease_is_taken_only_at_the_seen_epoch_and_renewals(store: LeaseStore):
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    store.renew("h1", {"A": 1})
    seen = store.read(["A"])["A"]
    assert seen.renewals == 1
    store.renew("h1", {"A": 1})  # the holder is alive: the seen value is stale
    assert store.acquire("h2", [], {"A": (seen.epoch, seen.renewals, seen.token)}, {"A": 4.0}) == {}
    now = store.read(["A"])["A"]
    assert store.acquire("h2", [], {"A": (now.epoch, now.renewals, now.token)}, {"A": 4.0}) == {
        "A": 2
    }


def test_renewal_fails_for_a_holder_whose_epoch_was_taken_over(store: LeaseStore):
    store.acquire("h1", ["A", "B"], {}, {"A": 4.0, "B": 4.0})
    store.acquire("h2", [], {"A": (1, 0, store.read(["A"])["A"].token)}, {"A": 4.0})
    assert store.renew("h1", {"A": 1, "B": 1}) == {"B": (True, False)}
    assert store.release("h1", {"A": 1}) == [], "only the holder may end its lease"
    assert store.read(["A"])["A"].holder == "h2"


def test_disabled_lock_is_never_acquired_and_the_holder_sees_the_flag(store: LeaseStore):
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    store.set_enabled("A", False, "ops@host", "maintenance")
    assert store.renew("h1", {"A": 1}) == {"A": (False, False)}
    assert store.read(["A"])["A"].holder == "h1", "disable never clears a held lease"
    store.release("h1", {"A": 1})
    assert store.acquire("h2", ["A"], {}, {"A": 4.0}) == {}
    store.set_enabled("A", True, "ops@host", None)
    assert store.acquire("h2", ["A"], {}, {"A": 4.0}) == {"A": 2}


def test_release_request_reaches_the_holder_through_its_renewal(store: LeaseStore):
    assert store.request_release("A", "ops")[0] is False, "nobody holds A"
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    assert store.request_release("A", "ops")[0]
    assert not store.request_release("A", "ops")[0], "asked once is enough"
    assert store.renew("h1", {"A": 1}) == {"A": (True, True)}
    store.release("h1", {"A": 1})
    assert store.acquire("h2", ["A"], {}, {"A": 4.0}) == {"A": 2}
    assert store.read(["A"])["A"].release_requested is False


def test_lock_names_are_data_not_sql(store: LeaseStore):
    name = "Ünï 'quoted' \"name\"; DROP TABLE x"
    assert store.acquire("h1", [name], {}, {name: 4.0}) == {name: 1}
    assert store.read([name])[name].holder == "h1"


def test_history_records_elections_in_order(store: LeaseStore):
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    store.release("h1", {"A": 1}, {"A": "shutdown"})
    store.acquire("h2", ["A"], {}, {"A": 4.0})
    events = [(h["event"], h["holder"]) for h in store.history("A")]
    assert events == [("acquired", "h2"), ("released", "h1"), ("acquired", "h1")]
    assert store.history("A")[1]["detail"] == "shutdown"


def test_enable_and_disable_are_idempotent_and_stale_commands_are_ignored(store: LeaseStore):
    received = time.monotonic()
    assert store.set_enabled("A", False, "ops", "maintenance", received_ago=0.0)[0]
    assert not store.set_enabled("A", False, "ops2", "again")[0], "already disabled"
    time.sleep(0.05)  # the enable comes after the late disable below was received
    assert store.set_enabled("A", True, "ops", None)[0]
    ago = time.monotonic() - received
    changed, lease = store.set_enabled("A", False, "late", "old", received_ago=ago)
    assert not changed and lease.enabled, "a late disable must not undo a later enable"
    assert [h["event"] for h in store.history("A")] == ["enabled", "disabled"]
    assert store.set_enabled("NEW", False, "ops", "before any worker")[1].enabled is False


def test_database_time_has_sub_second_precision(store: LeaseStore):
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    stamps = set()
    for _ in range(5):
        stamps.add(store.read(["A"])["A"].now)
        time.sleep(0.003)  # SQLite's clock reads whole milliseconds
    assert len(stamps) > 1 and any(s % 1 for s in stamps)
    lease = store.read(["A"])["A"]  # regression: PostgreSQL 14+ returned a Decimal here
    assert isinstance(lease.now, float) and 0 < (lease.lease_left or 0) <= 4.0


def test_fence_accepts_the_current_epoch_and_refuses_a_stale_one(store: LeaseStore, db_url: str):
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    engine = create_engine(db_url)
    with engine.begin() as conn:
        assert store.fence(conn, "A", 1, "h1", 1000)
    store.acquire("h2", [], {"A": (1, 0, store.read(["A"])["A"].token)}, {"A": 4.0})
    with engine.begin() as conn:
        assert not store.fence(conn, "A", 1, "h1", 1000)
        assert store.fence(conn, "A", 2, "h2", 1000)
    engine.dispose()


def test_schema_newer_than_the_code_is_refused(store: LeaseStore):
    with store.engine.begin() as conn:
        conn.execute(META.update().values(value="99"))
    with pytest.raises(SchemaTooNew, match="schema version 99.*upgrade celery-master"):
        store.ensure_schema()


def test_a_schema_1_database_is_upgraded_at_start(db_url: str):
    """The upgrade path: columns added since are added with their defaults, rows kept."""
    engine = create_engine(db_url)
    with engine.begin() as conn:  # the tables as celery-master 0.1 (schema 1) created them
        conn.exec_driver_sql(
            "CREATE TABLE celery_master_lease (lock_name VARCHAR(200) PRIMARY KEY, "
            "holder VARCHAR(255), epoch BIGINT NOT NULL DEFAULT 0, renewals BIGINT NOT NULL "
            "DEFAULT 0, ttl FLOAT, enabled BOOLEAN NOT NULL DEFAULT TRUE, release_requested "
            "BOOLEAN NOT NULL DEFAULT FALSE, yielded BOOLEAN NOT NULL DEFAULT FALSE, "
            "token VARCHAR(32), acquired_at FLOAT, renewed_at FLOAT, changed_at "
            "FLOAT, changed_by VARCHAR(255), reason TEXT)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE celery_master_member (holder VARCHAR(255) PRIMARY KEY, "
            "node VARCHAR(255) NOT NULL, held INTEGER NOT NULL, seen_at FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE celery_master_meta (key VARCHAR(64) PRIMARY KEY, "
            "value VARCHAR(255) NOT NULL)"
        )
        conn.exec_driver_sql("INSERT INTO celery_master_meta VALUES ('schema_version', '1')")
        conn.exec_driver_sql(
            "INSERT INTO celery_master_lease (lock_name, holder, epoch) VALUES ('OLD', NULL, 7)"
        )
        conn.exec_driver_sql("INSERT INTO celery_master_member VALUES ('h0', 'n0', 0, 0.0)")
    engine.dispose()
    store = LeaseStore(create_lease_engine(db_url, timeout=2.0))
    store.ensure_schema()
    lease = store.read(["OLD"])["OLD"]
    assert lease.epoch == 7 and lease.yielded_to is None and lease.progress_at is None
    assert store.acquire("h", ["OLD"], {}, {"OLD": 4.0}) == {"OLD": 8}
    (old_member,) = store.members()
    assert (old_member.app, dict(old_member.locks)) == ("", {})
    with store.engine.connect() as conn:
        assert conn.execute(select(META.c.value)).scalar_one() == str(SCHEMA_VERSION) == "2"
    store.ensure_schema()  # idempotent


def test_a_repeated_epoch_cannot_fool_a_standby(store: LeaseStore):
    """Regression (bench/failover.py, a database stopped with -m immediate and
    synchronous_commit=off): the database forgot an acquisition, the same holder
    re-acquired at the same epoch with renewals 0, and a standby whose old
    observation matched (holder, epoch, renewals) took over a live term."""
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    seen = store.read(["A"])["A"]
    store.release("h1", {"A": 1})
    with store.engine.begin() as conn:  # what the lost commits leave: the old epoch again
        conn.execute(LEASE.update().values(epoch=0, renewals=0))
    store.acquire("h1", ["A"], {}, {"A": 4.0})
    again = store.read(["A"])["A"]
    assert (again.holder, again.epoch, again.renewals) == (seen.holder, seen.epoch, seen.renewals)
    assert store.acquire("h2", [], {"A": (seen.epoch, seen.renewals, seen.token)}, {"A": 4.0}) == {}


def test_history_is_trimmed_per_lock_name_so_a_flood_keeps_the_others(
    store: LeaseStore, monkeypatch
):
    from celery_master.store import history

    monkeypatch.setattr(history, "KEEP_PER_LOCK", 5)
    for _ in range(3):
        store.set_enabled("B", False, "ops", "quiet one")
        store.set_enabled("B", True, "ops", None)
    for i in range(40):
        store.set_enabled("A", i % 2 == 1, "flood", None)
    assert len(store.history("A", 1000)) == 5
    assert len(store.history("B", 1000)) == 5, "the flood on A erased B's history"
