"""Real servers for the suite: one PostgreSQL and one Redis per session, a database per test."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.servers import PgServer, RedisServer

_db_counter = itertools.count()


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
