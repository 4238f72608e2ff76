"""A user's own test of a master job, with celery-master's pytest plugin only: `pytest examples/`.

Nothing here belongs to this project's test suite: swap `examples.app` for your
app module and the lock name for yours. The workers are real Celery workers,
in-process, on a memory broker and an SQLite lease file of the test's own.
"""

from __future__ import annotations

import pytest

from examples.app import app


@pytest.fixture
def master_app():
    return app


def test_the_heartbeat_fails_over_when_its_worker_stops(master_cluster):
    w1 = master_cluster.start_worker("w1")
    w2 = master_cluster.start_worker("w2")
    first = master_cluster.wait_for_master("HEARTBEAT")
    second = master_cluster.fail_over("HEARTBEAT")  # a warm shutdown of first's worker

    assert {first, second} == {w1, w2}
    assert second.is_master("HEARTBEAT") and not first.running
    newest = master_cluster.history("HEARTBEAT")[:3]
    assert [(h["event"], h["epoch"]) for h in newest] == [
        ("acquired", 2),
        ("released", 1),
        ("acquired", 1),
    ]


def test_a_release_hands_the_heartbeat_to_the_other_worker(master_cluster):
    master_cluster.start_worker("w1"), master_cluster.start_worker("w2")
    first = master_cluster.wait_for_master("HEARTBEAT")
    second = master_cluster.hand_over("HEARTBEAT")
    assert second is not first and first.running and not first.is_master("HEARTBEAT")
