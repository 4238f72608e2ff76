"""Which master jobs each app has registered: a plain record, knowing nothing of workers."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

from celery import Celery

from ..errors import ConfigurationError
from ..jobs.job import JobCallable, MasterJob

__all__ = ["add", "jobs_of"]

_jobs: weakref.WeakKeyDictionary[Celery, dict[str, MasterJob]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def add(
    app: Celery,
    lock_name: str,
    start: JobCallable,
    stop: JobCallable | None,
    options: Mapping[str, Any],
) -> MasterJob:
    """Validate and record one job; each lock name has one job per app."""
    job = MasterJob(lock_name, start, stop, dict(options))
    with _lock:
        jobs = _jobs.setdefault(app, {})
        if lock_name in jobs:
            raise ConfigurationError(
                f"lock name {lock_name!r} is already registered on this app: "
                "each lock name has one master job"
            )
        jobs[lock_name] = job
    return job


def jobs_of(app: Celery) -> list[MasterJob]:
    with _lock:
        return list(_jobs.get(app, {}).values())
