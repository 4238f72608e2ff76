"""The HA beat master job: a fresh embedded beat thread for every term.

``EmbeddedService`` is single-use, so each ``start`` builds a new one bound to
that term's context; ``stop`` blocks until its thread has stopped (about a
second, the embedded service's loop interval).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

from celery.beat import EmbeddedService

from ..errors import ConfigurationError
from ..job import MasterContext, MasterJob, validate_lock_name
from ..store.beat import BeatState
from ..store.leases import LeaseStore
from .scheduler import MasterScheduler

__all__ = ["BeatJob", "beat_settings"]

logger = logging.getLogger("celery_master")
CELERY_DEFAULT_SCHEDULERS = ("celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _flag(raw: Any, source: str) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ConfigurationError(f"{source} ({raw!r}) must be true or false")


def beat_settings(
    conf: Any,
    option: bool | None = None,
    environ: Mapping[str, str] | None = None,
    identity: str | None = None,
) -> tuple[bool, str]:
    """(enabled, lock name): worker option > CELERY_MASTER_BEAT > app.conf.master_beat.

    The default lock name is ``celery-beat:<app identity>``, so two apps on one
    lease database never share a beat by accident.
    """
    env = os.environ if environ is None else environ
    if option is not None:
        enabled = bool(option)
    elif env.get("CELERY_MASTER_BEAT", "").strip():
        enabled = _flag(env["CELERY_MASTER_BEAT"], "environment variable CELERY_MASTER_BEAT")
    else:
        enabled = _flag(conf.get("master_beat") or False, "app.conf.master_beat")
    lock = (
        env.get("CELERY_MASTER_BEAT_LOCK_NAME", "").strip()
        or conf.get("master_beat_lock_name")
        or (f"celery-beat:{identity}" if identity else "celery-beat")
    )
    return enabled, validate_lock_name(lock)


class BeatJob:
    """start/stop of the embedded beat; the schedule comes from ``beat_schedule``."""

    def __init__(self, app: Any, lock_name: str, store: LeaseStore) -> None:
        self.app = app
        self.lock_name = lock_name
        self.store = store
        self._services: dict[int, Any] = {}
        configured = app.conf.beat_scheduler
        self.plugged = (
            None
            if configured in (None, *CELERY_DEFAULT_SCHEDULERS) or configured is MasterScheduler
            else configured
        )
        if self.plugged:
            logger.warning(
                "celery-master: beat of %r uses the plugged-in scheduler %s: it runs only on the "
                "master, but its own state writes are not fenced by the epoch",
                lock_name,
                configured,
            )

    def as_job(self) -> MasterJob:
        return MasterJob(self.lock_name, self.start, self.stop)

    def start(self, ctx: MasterContext) -> None:
        scheduler: Any = self.plugged or functools.partial(
            MasterScheduler, ctx=ctx, state=BeatState(self.store, self.lock_name)
        )
        service = EmbeddedService(self.app, thread=True, scheduler_cls=scheduler)
        self._services[ctx.epoch] = service
        service.start()

    def stop(self, ctx: MasterContext) -> None:
        service = self._services.pop(ctx.epoch, None)
        if service is not None:
            service.stop()
