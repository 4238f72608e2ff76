"""Schema ownership on a real PostgreSQL: the owner migrates, workers get rows and nothing more.

A worker whose role may not create or upgrade the lease schema stays out of
the election with one ERROR naming ``celery master migrate``, keeps looking,
and joins by itself once the owner has run it.
"""

from __future__ import annotations

import logging
import uuid

import psycopg2
import pytest
import sqlalchemy as sa

from celery_master.election.elector import Elector
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.schema import SCHEMA_VERSION
from tests.support.cli import run_master
from tests.support.cluster import wait_for

FAST = JobSettings(init_delay=0.05, check_interval=0.2, heartbeat_interval=0.5)
JOINS = 10.0  # the elector looks again every 2 s (MAX_BACKOFF); room for a stalled machine


@pytest.fixture
def worker_url(pg_url: str, pg_server) -> str:
    """A login role of its own for the workers: no privilege on the lease tables yet."""
    role = f"worker_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(
        host="127.0.0.1", port=pg_server.port, user="postgres", dbname="postgres"
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'worker-pw'")
    conn.close()
    return pg_url.replace("postgres:secret-pw@", f"{role}:worker-pw@")


def role_of(url: str) -> str:
    return str(sa.engine.make_url(url).username)


def elector(url: str, starts: list[int]) -> Elector:
    store = LeaseStore(create_lease_engine(url, timeout=FAST.heartbeat_interval))
    job = MasterJob("JOB", lambda ctx: starts.append(ctx.epoch))
    return Elector(store, [(job, FAST)], Holder("w"))


def test_migrate_creates_the_schema_and_the_granted_worker_role_elects_with_rows_only(
    pg_url, worker_url, electors
):
    role = role_of(worker_url)
    done = run_master(pg_url, "migrate", "--grant", role)
    assert done.code == 0, done.output
    assert f"schema version {SCHEMA_VERSION} (created " in done.output
    assert "created celery_master_lease;" in done.output
    assert f"granted SELECT, INSERT, UPDATE, DELETE to {role}" in done.output
    again = run_master(pg_url, "migrate")
    assert again.code == 0 and "(nothing to change)" in again.output, again.output

    starts: list[int] = []
    electors.append(elector(worker_url, starts))
    electors[0].start()
    wait_for(lambda: starts, 10, "the worker role to elect a master")
    electors[0].stop(timeout=3)  # a release writes history: the id sequence is granted too
    events = [h["event"] for h in LeaseStore(create_lease_engine(pg_url)).history("JOB")]
    assert events == ["released", "acquired"]
    engine = create_lease_engine(worker_url)
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), engine.begin() as c:
        c.execute(sa.text("CREATE TABLE celery_master_extra (i int)"))


def out_until_migrated(
    electors: list[Elector], caplog, worker_url: str, owner_url: str, *migrate: str
) -> tuple[str, str]:
    """(the error the worker showed while out, migrate's output); checks it then joined."""
    starts: list[int] = []
    electors.append(elector(worker_url, starts))
    with caplog.at_level(logging.ERROR):
        electors[0].start()
        error = wait_for(lambda: electors[0].snapshot()["JOB"]["last_error"], 10, "the error")
        done = run_master(owner_url, "migrate", *migrate)
        assert done.code == 0, done.output
        wait_for(lambda: starts, JOINS, "the worker to join once migrated")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "stays out of the election" in errors[0], errors
    assert electors[0].snapshot()["JOB"]["last_error"] is None
    return error, done.output


def test_a_worker_that_may_not_create_the_tables_stays_out_naming_migrate_then_joins(
    pg_url, worker_url, electors, caplog
):
    error, _ = out_until_migrated(
        electors, caplog, worker_url, pg_url, "--grant", role_of(worker_url)
    )
    assert "celery -A APP master migrate" in error and "may not create" in error, error


def test_an_older_schema_the_worker_may_not_upgrade_keeps_it_out_naming_migrate(
    pg_url, worker_url, electors, caplog
):
    assert run_master(pg_url, "migrate", "--grant", role_of(worker_url)).code == 0
    with create_lease_engine(pg_url).begin() as conn:  # as schema 1 left it
        conn.execute(sa.text("ALTER TABLE celery_master_lease DROP COLUMN progress_at"))
        conn.execute(sa.text("UPDATE celery_master_meta SET value = '1'"))
    error, done = out_until_migrated(electors, caplog, worker_url, pg_url)
    assert "older" in error and "celery -A APP master migrate" in error, error
    assert "added celery_master_lease.progress_at" in done
    assert f"schema version 1 -> {SCHEMA_VERSION}" in done, done


def test_migrate_as_a_role_that_may_not_is_one_line_naming_the_owner(worker_url):
    done = run_master(worker_url, "migrate")
    assert done.code == 1 and len(done.output.splitlines()) == 1, done.output
    assert "may not create them" in done.output and "owns the lease schema" in done.output
