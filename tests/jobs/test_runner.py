"""The runner: a job never starts after its term was stopped, and ``stopped`` waits for start()."""

from __future__ import annotations

import threading

from celery_master.jobs.job import MasterContext, MasterJob
from celery_master.jobs.runner import Runner
from tests.support.cluster import wait_for


def runner(start, stop=None, timeout: float = 0.5) -> Runner:
    ctx = MasterContext("A", 1, "h", deadline=float("inf"))
    return Runner(MasterJob("A", start, stop), ctx, timeout)


def test_a_runner_told_to_stop_before_it_started_never_starts_its_job():
    """Regression: the watchdog stepped a published runner down before its start();
    start() ran the job anyway, after stop(), and the lease was freed while it ran."""
    calls: list[str] = []
    r = runner(lambda ctx: calls.append("start"), lambda ctx: calls.append("stop"))
    r.step_down("lease deadline passed")
    started = r.start()
    wait_for(r.stopped.is_set, 5, "the stopped runner")
    wait_for(lambda: "stop" in calls, 5, "stop() to be called")
    assert calls == ["stop"], "start() ran after the term was stopped"
    assert started is False


def test_stopped_is_set_only_once_start_has_returned():
    release = threading.Event()
    returned: list[bool] = []

    def start(ctx):
        release.wait(10)
        returned.append(True)

    r = runner(start, timeout=0.1)
    r.start()
    r.step_down("test")
    assert not r.stopped.wait(0.5), "stopped before start() returned: the lease would be freed"
    release.set()
    wait_for(r.stopped.is_set, 5, "stopped after start() returned")
    assert returned == [True]


def test_start_and_step_down_racing_never_leave_a_job_running_after_stopped():
    """Thread interleavings the lock must cover: whichever wins, stopped implies start ended."""
    for _ in range(200):
        running = threading.Event()
        finished = threading.Event()

        def start(ctx, running=running, finished=finished):
            running.set()
            ctx.stopping.wait(5)
            finished.set()

        r = runner(start)
        stepper = threading.Thread(target=r.step_down, args=("race",))
        stepper.start()
        r.start()
        stepper.join()
        wait_for(r.stopped.is_set, 5, "the runner to stop")
        assert finished.is_set() or not running.is_set(), "start() still ran after stopped"
