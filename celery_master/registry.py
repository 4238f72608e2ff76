"""Which master jobs an app has registered; ``register()`` is the public entry point."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from celery import Celery

from .errors import ConfigurationError
from .job import JobCallable, MasterJob

__all__ = ["jobs_of", "register"]

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
    from .bootstep import MasterStep  # the step imports control, which needs the app loaded

    job = MasterJob(lock_name, start, stop, dict(options))
    with _lock:
        jobs = _jobs.setdefault(app, {})
        if lock_name in jobs:
            raise ConfigurationError(
                f"lock name {lock_name!r} is already registered on this app: "
                "each lock name has one master job"
            )
        jobs[lock_name] = job
        if MasterStep not in app.steps["worker"]:
            app.steps["worker"].add(MasterStep)
    return job


def master_job(app: Celery, lock_name: str, **options: Any) -> Callable[[JobCallable], JobCallable]:
    """Decorator form of ``register``: ``@master_job(app, "POLLER")`` on the start function."""

    def decorate(start: JobCallable) -> JobCallable:
        register(app, lock_name, start, None, **options)
        return start

    return decorate


def jobs_of(app: Celery) -> list[MasterJob]:
    with _lock:
        return list(_jobs.get(app, {}).values())


def unregister_all(app: Celery) -> None:
    """Forget an app's jobs (tests that build many apps in one process)."""
    with _lock:
        _jobs.pop(app, None)
