"""The pytest plugin users test their master jobs with: loaded by entry point, inert on import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from celery import Celery, signals

import celery_master
from celery_master import testing
from celery_master.holder import Holder
from celery_master.jobs.beat.scheduler import HEADER_EPOCH
from celery_master.testing import MasterCluster

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    (entry,) = [e for e in entry_points(group="pytest11") if e.name == "celery_master"]
    assert entry.value == "celery_master.testing"


def test_importing_the_plugin_creates_no_engine_thread_worker_or_file(tmp_path: Path):
    probe = textwrap.dedent(
        """
        import gc, os, threading
        import celery, sqlalchemy.engine
        before = {t.ident for t in threading.enumerate()}
        import celery_master.testing
        new_threads = [t.name for t in threading.enumerate() if t.ident not in before]
        engines = [o for o in gc.get_objects() if isinstance(o, sqlalchemy.engine.Engine)]
        print(new_threads, len(engines), os.listdir("."), celery.current_app.main)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "0", "[]", "default"], out.stdout


def test_fixtures_are_named_master_and_clash_with_no_celery_fixture():
    import celery.contrib.pytest as celery_fixtures
    import pytest_celery

    ours = {name for name in dir(testing) if name.startswith("master_")}
    assert ours == {"master_app", "master_cluster", "master_database_url", "master_timing"}
    theirs = set(dir(celery_fixtures)) | set(dir(pytest_celery))
    assert not ours & theirs
    assert "celery_worker" in theirs  # the name we must never take


@pytest.fixture
def master_app() -> Celery:
    app = Celery("plugin-test", broker="memory://", set_as_current=False)
    app.conf.master_database_url = "postgresql+psycopg2://must-be-replaced/by-the-fixture"

    def start(ctx: celery_master.MasterContext) -> None:
        ctx.stopping.wait()

    celery_master.register(app, "JOB", start)
    return app


def test_an_election_hand_over_and_fail_over_in_process(master_cluster: MasterCluster):
    assert master_cluster.app.conf.master_database_url.startswith("sqlite:///")
    w1, w2, w3 = (master_cluster.start_worker() for _ in range(3))
    first = master_cluster.wait_for_master("JOB")
    second = master_cluster.hand_over("JOB")
    assert second is not first and not first.is_master("JOB")
    third = master_cluster.fail_over("JOB")
    assert not second.running and third is not second and third.is_master("JOB")
    events = [(h["event"], h["epoch"]) for h in master_cluster.history("JOB")]
    assert events[:2] == [("acquired", 3), ("released", 2)]
    assert ("release-requested", None) in events and events[-1] == ("acquired", 1)
    assert {w.hostname for w in (w1, w2, w3)} == {"w1@testing", "w2@testing", "w3@testing"}


def test_disable_stops_the_job_everywhere_until_enable(master_cluster: MasterCluster):
    master_cluster.start_worker(), master_cluster.start_worker()
    master_cluster.wait_for_master("JOB")
    master_cluster.disable("JOB", reason="maintenance")
    for worker in master_cluster.running():
        testing.wait_until(
            lambda w=worker: w.roles().get("JOB") == "disabled",
            master_cluster.bound(),
            f"{worker} to see JOB disabled",
        )
    assert master_cluster.lease("JOB").holder is None
    master_cluster.enable("JOB")
    assert master_cluster.wait_for_master("JOB").is_master("JOB")


def test_bounds_follow_the_slowest_registered_job(master_cluster: MasterCluster):
    fast = master_cluster.bound()
    celery_master.register(master_cluster.app, "SLOW", lambda ctx: None, heartbeat_interval=2)
    # ttl 2 x (2 + 1) = 6 s, + check 0.2 x 2 + heartbeat 2 + init 0.05 + one stall of 1 s
    assert master_cluster.bound() == pytest.approx(9.45)
    assert fast == pytest.approx(1.0 + 0.05 + 1.5 + 0.4 + 0.5)


def test_the_app_configuration_is_restored_after_the_test(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_user="""
        import pytest
        from celery import Celery
        import celery_master

        app = Celery("user", broker="redis://localhost:1/0")
        app.conf.master_database_url = "postgresql+psycopg2://user@db/prod"
        celery_master.register(app, "JOB", lambda ctx: ctx.stopping.wait())

        @pytest.fixture
        def master_app():
            return app

        def test_elects(master_cluster):
            master_cluster.start_worker()
            assert master_cluster.wait_for_master("JOB").is_master("JOB")
            assert app.conf.broker_url == "memory://"

        def test_after():
            assert app.conf.broker_url == "redis://localhost:1/0"
            assert app.conf.master_database_url == "postgresql+psycopg2://user@db/prod"
        """
    )
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)
    assert time.monotonic() - started < 60


def test_without_celery_app_fixture_the_error_names_the_fix(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_user="""
        def test_needs_an_app(master_cluster):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:celery", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*master_app: no celery_app fixture; install pytest-celery*"])
    assert result.ret != 0


def test_the_default_app_is_celery_contrib_pytests_celery_app(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_user="""
        import celery_master

        def test_elects(celery_app, master_cluster):
            assert master_cluster.app is celery_app
            celery_master.register(celery_app, "JOB", lambda ctx: ctx.stopping.wait())
            master_cluster.start_worker("only")
            assert master_cluster.wait_for_master("JOB").name == "only"
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)


def test_ha_beat_sends_from_one_worker_and_moves_on_fail_over(master_cluster: MasterCluster):
    """Each send names its sender: the epoch header is a term, and the history says whose."""
    app = master_cluster.app
    epochs: list[object] = []  # one per send, in send order

    @app.task(name="plugin_test.tick")
    def tick() -> None:
        return None

    def record(sender: str | None = None, headers: dict | None = None, **_: object) -> None:
        if sender == "plugin_test.tick":
            epochs.append((headers or {}).get(HEADER_EPOCH))

    app.conf.beat_schedule = {"tick": {"task": "plugin_test.tick", "schedule": 0.2}}
    signals.before_task_publish.connect(record, weak=False)
    try:
        master_cluster.start_worker("b1", master_beat=True)
        master_cluster.start_worker("b2", master_beat=True)
        lock = master_cluster.beat_lock_name
        first = master_cluster.wait_for_master(lock)
        testing.wait_until(lambda: len(epochs) >= 2, master_cluster.bound(), "beat to send")
        second = master_cluster.fail_over(lock)
        count = len(epochs)
        testing.wait_until(lambda: len(epochs) > count + 1, master_cluster.bound(), "beat again")
        assert second is not first and second.is_master(lock) and not first.running
    finally:
        signals.before_task_publish.disconnect(record)
        app.conf.beat_schedule = {}
    terms = {
        h["epoch"]: Holder.node_of(str(h["holder"]))
        for h in master_cluster.history(lock)
        if h["event"] == "acquired"
    }
    senders = [terms.get(e, f"no term of {lock} has epoch {e!r}") for e in epochs]
    in_turn = [s for i, s in enumerate(senders) if i == 0 or s != senders[i - 1]]
    assert in_turn == [first.hostname, second.hostname], f"senders in send order: {senders}"
