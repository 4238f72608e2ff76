"""Real servers for the suite: one PostgreSQL and one Redis per session, a database per test.

Nothing leaks in from the shell that runs the suite: the environment variables
Celery and celery-master read are removed for every test (and Cluster.create
strips them from the workers' environment), so a developer's
``CELERY_BROKER_URL`` can never point the tests at a real broker.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_master.election.elector import Elector
from tests.support.cluster import Cluster, foreign_environ
from tests.support.servers import PgServer, RedisServer

_db_counter = itertools.count()
_redis_dbs = itertools.count()


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never inherit CELERY_BROKER_URL, CELERY_MASTER_* and friends."""
    for name in foreign_environ():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = PgServer()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    name = f"cm_test_{next(_db_counter)}"
    janitor = pg_server.janitor(name)
    janitor.init()
    yield pg_server.url(name)
    # connections of killed workers may linger a moment; the server dies with the session anyway
    with contextlib.suppress(Exception):
        janitor.drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'leases.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A Redis database of this test's own, empty at the start and flushed at the end.

    Database 0 is never handed out, so a stray client on the default database
    cannot see a test's queues.
    """
    db = 1 + next(_redis_dbs) % (RedisServer.databases - 1)
    redis_server.flushdb(db)
    yield redis_server.url_for(db)
    with contextlib.suppress(Exception):
        redis_server.flushdb(db)


@pytest.fixture
def electors() -> Iterator[list[Elector]]:
    """Electors a test made and started; each is stopped (a hand-over, bounded) at the end."""
    made: list[Elector] = []
    yield made
    for e in made:
        e.stop(timeout=3)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    clusters: list[Cluster] = []

    def make(database_url: str, **kwargs: object) -> Cluster:
        sub = tmp_path / f"cluster{len(clusters)}"
        sub.mkdir()
        cluster = Cluster.create(sub, database_url, **kwargs)  # type: ignore[arg-type]
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
