"""Which master jobs an app has registered; ``register()`` is the public entry point."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import click
from celery import Celery, signals

from .errors import ConfigurationError
from .job import JobCallable, MasterJob

__all__ = ["install", "jobs_of", "master_job", "register"]

_jobs: weakref.WeakKeyDictionary[Celery, dict[str, MasterJob]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(
    app: Celery,
    lock_name: str,
    start: JobCallable,
    stop: JobCallable | None = None,
    **options: Any,
) -> MasterJob:
    """Run ``start(ctx)`` on exactly one worker of ``app`` at a time, per ``lock_name``.

    Options (seconds): init_delay, check_interval, heartbeat_interval,
    max_heartbeat_retry_count; they override ``app.conf.master_*`` and the
    ``CELERY_MASTER_*`` environment for this job. Mistakes raise
    ConfigurationError here, at import time, not on some worker later.
    """
    job = MasterJob(lock_name, start, stop, dict(options))
    with _lock:
        jobs = _jobs.setdefault(app, {})
        if lock_name in jobs:
            raise ConfigurationError(
                f"lock name {lock_name!r} is already registered on this app: "
                "each lock name has one master job"
            )
        jobs[lock_name] = job
    install(app)
    return job


def install(app: Celery) -> None:
    """Add the worker step and the ``--master-beat`` worker option to ``app`` (idempotent).

    ``register()`` calls it; call it yourself in an app module that registers
    no job but wants ``celery worker --master-beat``.
    """
    from .bootstep import MasterStep  # the step imports control, which needs the app loaded
    from .broadcast import BroadcastStep

    with _lock:
        if MasterStep not in app.steps["worker"]:
            app.steps["worker"].add(MasterStep)
        app.steps["consumer"].add(BroadcastStep)  # a set: adding twice is a no-op
        options = app.user_options["worker"]
        if not any("--master-beat" in getattr(o, "opts", ()) for o in options):
            options.add(
                click.Option(
                    ["--master-beat"],
                    is_flag=True,
                    default=False,
                    help="Run celery beat on the elected master only (celery-master).",
                )
            )


@signals.celeryd_init.connect
def _install_for_beat(
    sender: Any = None, instance: Any = None, conf: Any = None, options: Any = None, **kwargs: Any
) -> None:
    """``app.conf.master_beat = True`` alone is enough: add the step before the worker is built."""
    from .beat.job import beat_settings

    app = getattr(instance, "app", None)
    if app is None:
        return
    option = True if (options or {}).get("master_beat") else None
    if beat_settings(app.conf, option)[0]:
        install(app)


def master_job(app: Celery, lock_name: str, **options: Any) -> Callable[[JobCallable], JobCallable]:
    """Decorator form of ``register``: ``@master_job(app, "POLLER")`` on the start function."""

    def decorate(start: JobCallable) -> JobCallable:
        register(app, lock_name, start, None, **options)
        return start

    return decorate


def jobs_of(app: Celery) -> list[MasterJob]:
    with _lock:
        return list(_jobs.get(app, {}).values())
