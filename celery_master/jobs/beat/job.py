"""The HA beat master job: a fresh scheduler for every term, ticked in the job's start thread."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from celery.utils.imports import load_extension_class_names, symbol_by_name

from ...errors import ConfigurationError
from ...settings import resolve_beat_misfire
from ...store.beat import BeatState
from ...store.leases import LeaseStore
from ..job import MasterContext, MasterJob, validate_lock_name
from .scheduler import MasterScheduler

__all__ = ["BeatJob", "beat_settings"]

logger = logging.getLogger(__name__)
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
    """start/stop of the beat loop; the schedule comes from ``beat_schedule``.

    ``start(ctx)`` builds the scheduler in the runner's start thread, so a
    set-up error (the stored state cannot be read or reconciled) fails the
    start, which the runner logs and retries after a back-off. It then runs
    the beat loop itself until ``ctx.stopping`` is set: every wait is on that
    event, so the runner's bounded join of the start thread is the only wait
    in a stop (Celery's ``EmbeddedService.stop`` waits without a bound).
    """

    #: longest sleep of the loop; also how often progress is reported
    loop_interval = 1.0

    def __init__(self, app: Any, lock_name: str, store: LeaseStore) -> None:
        self.app = app
        self.lock_name = lock_name
        self.store = store
        self.misfire = resolve_beat_misfire(app.conf)
        configured = app.conf.beat_scheduler
        self.plugged = (
            None
            if configured in (None, *CELERY_DEFAULT_SCHEDULERS) or configured is MasterScheduler
            else configured
        )
        if self.plugged:
            logger.warning(
                "beat of %r uses the plugged-in scheduler %s: it runs only on the "
                "master, but its own state writes are not fenced by the epoch",
                lock_name,
                configured,
            )

    @property
    def alive_within(self) -> float:
        """A few loop intervals: ``status --check`` calls a beat stalled past this."""
        return 5 * self.loop_interval

    def as_job(self) -> MasterJob:
        return MasterJob(self.lock_name, self.start, None)

    def _scheduler(self, ctx: MasterContext) -> Any:
        if self.plugged:
            cls = symbol_by_name(
                self.plugged, aliases=dict(load_extension_class_names("celery.beat_schedulers"))
            )
            return cls(
                app=self.app,
                schedule_filename=self.app.conf.beat_schedule_filename,
                max_interval=self.loop_interval,
                lazy=False,
            )
        scheduler = MasterScheduler(
            app=self.app,
            ctx=ctx,
            state=BeatState(self.store, self.lock_name),
            misfire=self.misfire,
            max_interval=self.loop_interval,
            lazy=False,
        )
        scheduler.alive_within = self.alive_within
        return scheduler

    def start(self, ctx: MasterContext) -> None:
        """Run beat for one term; returns once ``ctx.stopping`` is set."""
        self.app.set_current()
        scheduler = self._scheduler(ctx)
        logger.info("beat of %r started (epoch %d)", self.lock_name, ctx.epoch)
        try:
            self._loop(ctx, scheduler)
        finally:
            try:
                scheduler.close()
            except Exception:
                logger.exception("beat of %r: closing the scheduler failed", self.lock_name)
            logger.info("beat of %r stopped (epoch %d)", self.lock_name, ctx.epoch)

    def _loop(self, ctx: MasterContext, scheduler: Any) -> None:
        """Tick until the term ends; an unexpected error is logged once and retried."""
        failing = False
        delay = 0.0
        while not ctx.stopping.wait(delay):
            ctx.alive(within=self.alive_within)
            try:
                delay = float(scheduler.tick())
            except Exception as exc:
                scheduler._heap = None  # rebuilt from the schedule (what was reserved stays so)
                if not failing:
                    logger.exception("beat of %r: a tick failed; retrying", self.lock_name)
                failing = True
                ctx.report_error(f"beat: tick failed: {type(exc).__name__}: {exc}"[:500])
                delay = self.loop_interval
                continue
            if failing:
                failing = False
                ctx.report_error(None)
                logger.warning("beat of %r: ticks succeed again", self.lock_name)
            delay = min(max(delay, 0.0), self.loop_interval)
