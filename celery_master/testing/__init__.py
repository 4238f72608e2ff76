"""pytest fixtures for testing your own master jobs with in-process workers.

Installing celery-master registers this module as a pytest plugin (entry
point ``pytest11``). Importing it has no side effects: no engine, thread or
worker exists until a test asks for a fixture. The fixtures are named
``master_*`` so they never clash with ``celery.contrib.pytest``
(``celery_app``, ``celery_worker``...) or pytest-celery's container fixtures.

``master_cluster`` runs real Celery workers (``celery.contrib.testing.worker.
start_worker``, solo pool, each in a thread of the test process) with the
worker step, on a memory broker and an SQLite lease file in ``tmp_path``,
with fast election timing, so a test elects, hands over and fails over in
about a second::

    @pytest.fixture
    def master_app():
        return my_project.celery.app

    def test_poller_fails_over(master_cluster):
        master_cluster.start_worker("w1"), master_cluster.start_worker("w2")
        first = master_cluster.wait_for_master("POLLER")
        assert master_cluster.fail_over("POLLER") is not first
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from ..settings import ENV_PREFIX, TIMING_NAMES
from .cluster import FAST_TIMING, STALL, MasterCluster, MasterWorker, wait_until

__all__ = [
    "FAST_TIMING",
    "STALL",
    "MasterCluster",
    "MasterWorker",
    "master_app",
    "master_cluster",
    "master_database_url",
    "master_timing",
    "wait_until",
]


# -- fixtures ---------------------------------------------------------------------
@pytest.fixture
def master_app(request: pytest.FixtureRequest) -> Celery:
    """The app under test: Celery's ``celery_app`` fixture; override it to return yours."""
    try:
        return request.getfixturevalue("celery_app")  # type: ignore[no-any-return]
    except pytest.FixtureLookupError:
        pytest.fail(
            "master_app: no celery_app fixture; install pytest-celery (or add "
            'pytest_plugins = ("celery.contrib.pytest",) to conftest.py), or define a '
            "master_app fixture that returns your Celery app",
            pytrace=False,
        )


@pytest.fixture
def master_database_url(tmp_path: Path) -> str:
    """An SQLite lease file of this test's own."""
    return f"sqlite:///{tmp_path / 'celery-master.sqlite3'}"


@pytest.fixture
def master_timing() -> Mapping[str, float | int]:
    """Election timing for the test (``app.conf.master_*``); per-job options still win."""
    return dict(FAST_TIMING)


@pytest.fixture
def master_cluster(
    master_app: Celery,
    master_database_url: str,
    master_timing: Mapping[str, float | int],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MasterCluster]:
    """In-process workers of ``master_app`` on a memory broker and ``master_database_url``.

    The app's configuration is changed for the test and restored after it;
    ``CELERY_MASTER_*`` environment variables are hidden, since they would
    override it.
    """
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    conf = master_app.conf
    changes: dict[str, Any] = {
        "broker_url": "memory://",
        "broker_transport": None,  # a custom transport class would win over the URL
        "master_database_url": master_database_url,
        **{f"master_{name}": master_timing[name] for name in TIMING_NAMES if name in master_timing},
    }
    saved = {key: conf.get(key) for key in changes}
    conf.update(changes)
    cluster = MasterCluster(master_app, master_database_url)
    try:
        yield cluster
    finally:
        cluster.close()
        conf.update(saved)
