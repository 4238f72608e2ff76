"""register(): mistakes fail at registration with one clear message."""

from __future__ import annotations

import pytest
from celery import Celery

import celery_master
from celery_master.errors import ConfigurationError
from celery_master.worker.bootstep import MasterStep
from celery_master.worker.registry import jobs_of


def noop(ctx):
    return None


@pytest.fixture
def app():
    return Celery("t", broker="memory://")


def test_register_adds_the_worker_step_once_and_keeps_every_job(app):
    celery_master.register(app, "A", noop)
    celery_master.register(app, "B", noop, noop, check_interval=5)
    assert [j.lock_name for j in jobs_of(app)] == ["A", "B"]
    assert MasterStep in app.steps["worker"]


def test_decorator_registers_the_start_function(app):
    @celery_master.master_job(app, "POLLER", heartbeat_interval=2)
    def poll(ctx):
        return None

    (job,) = jobs_of(app)
    assert job.start is poll and job.options == {"heartbeat_interval": 2}


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("",), {}, "must not be empty"),
        (("   ",), {}, "must not be empty"),
        ((" A",), {}, "leading/trailing spaces"),
        (("A\nB",), {}, "control characters"),
        (("x" * 201,), {}, "at most 200"),
        ((42,), {}, "must be a string"),
        (("A", "not callable"), {}, "start for 'A' must be callable"),
        (("A", noop, 3), {}, "stop for 'A' must be callable"),
        (("A", noop), {"check_intervall": 1}, "unknown option.*check_intervall.*allowed"),
        (("A", noop), {"database_url": "sqlite://"}, "app.conf.master_database_url"),
        (("A", noop), {"check_interval": -1}, "option check_interval="),
    ],
)
def test_bad_registrations_are_refused(app, args, kwargs, match):
    lock_name, *rest = args
    start = rest[0] if rest else noop
    stop = rest[1] if len(rest) > 1 else None
    with pytest.raises(ConfigurationError, match=match):
        celery_master.register(app, lock_name, start, stop, **kwargs)
    assert jobs_of(app) == []


def test_a_lock_name_is_registered_once(app):
    celery_master.register(app, "A", noop)
    with pytest.raises(ConfigurationError, match="already registered"):
        celery_master.register(app, "A", noop)


def test_unicode_and_quotes_are_valid_lock_names(app):
    celery_master.register(app, "Zürich 'beat' \"α\"", noop)
    assert jobs_of(app)[0].lock_name == "Zürich 'beat' \"α\""


def test_public_api_is_exactly_what_all_lists():
    assert sorted(celery_master.__all__) == [
        "CeleryMasterError",
        "ConfigurationError",
        "MasterContext",
        "MasterJob",
        "NotMaster",
        "install",
        "master_job",
        "register",
    ]
    for name in celery_master.__all__:
        assert getattr(celery_master, name) is not None
