"""psycopg 3 URLs get the server-side timeouts psycopg2 URLs get (real PostgreSQL)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.exc import OperationalError

from celery_master.errors import ConfigurationError
from celery_master.store.engine import create_lease_engine
from celery_master.store.leases import LeaseStore

SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")


def with_driver(url: str, driver: str) -> str:
    return url.replace("postgresql+psycopg2://", f"postgresql+{driver}://", 1)


def test_psycopg3_connections_carry_the_same_timeouts_as_psycopg2(pg_url: str):
    seen = {}
    for driver in ("psycopg2", "psycopg"):
        engine = create_lease_engine(with_driver(pg_url, driver), timeout=0.5)
        assert engine.dialect.driver == driver
        with engine.connect() as conn:
            seen[driver] = {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar_one()
                for name in (*SETTINGS, "application_name")
            }
        engine.dispose()
    assert seen["psycopg"] == seen["psycopg2"]
    assert seen["psycopg"] == {
        "statement_timeout": "500ms",
        "lock_timeout": "500ms",
        "idle_in_transaction_session_timeout": "1s",
        "application_name": "celery-master",
    }


def test_a_hung_statement_on_psycopg3_is_cut_off_by_the_server(pg_url: str):
    engine = create_lease_engine(with_driver(pg_url, "psycopg"), timeout=0.5)
    began = time.monotonic()
    with pytest.raises(OperationalError, match="statement timeout"), engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_sleep(30)")
    assert time.monotonic() - began < 0.5 + 2.0  # the timeout, plus a stall of the machine
    engine.dispose()


def test_the_lease_store_works_through_psycopg3(pg_url: str):
    store = LeaseStore(create_lease_engine(with_driver(pg_url, "psycopg"), timeout=2.0))
    store.ensure_schema()
    changed, lease = store.set_enabled("JOB", False, "pytest", "psycopg 3")
    assert changed and not lease.enabled and lease.reason == "psycopg 3"
    assert [h["event"] for h in store.history("JOB")] == ["disabled"]
    store.engine.dispose()


def test_a_postgresql_driver_without_libpq_options_is_refused():
    with pytest.raises(ConfigurationError, match=r"postgresql\+psycopg2:// or postgresql\+psycopg"):
        create_lease_engine("postgresql+pg8000://u:secret@db/x")
