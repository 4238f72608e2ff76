"""``register()`` and its decorator form: record a job, then make sure workers run the step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from .jobs.job import JobCallable, MasterJob
from .worker import registry
from .worker.bootstep import install

__all__ = ["install", "master_job", "register"]


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
    ``CELERY_MASTER_*`` environment for this job; ``weight`` and ``prefer``
    steer the spread. Mistakes raise ConfigurationError here, at import time,
    not on some worker later.
    """
    job = registry.add(app, lock_name, start, stop, options)
    install(app)
    return job


def master_job(app: Celery, lock_name: str, **options: Any) -> Callable[[JobCallable], JobCallable]:
    """Decorator form of ``register``: ``@master_job(app, "POLLER")`` on the start function."""

    def decorate(start: JobCallable) -> JobCallable:
        register(app, lock_name, start, None, **options)
        return start

    return decorate
