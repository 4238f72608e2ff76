"""A Celery ``Scheduler`` whose state (last run per entry) lives in the lease database.

Celery's own seam (``setup_schedule``, ``reserve``, ``sync``) as
django-celery-beat uses it; the one change that matters is ``reserve``: the
next run is written, fenced by the epoch, *before* the task is sent.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from celery.beat import ScheduleEntry, Scheduler

from ..errors import NotMaster
from ..job import MasterContext
from ..store.beat import BeatState

__all__ = ["MasterScheduler"]

logger = logging.getLogger("celery_master")


class MasterScheduler(Scheduler):
    """Runs only inside a master term: every reservation is fenced by ``ctx``."""

    def __init__(self, *args: Any, ctx: MasterContext, state: BeatState, **kwargs: Any) -> None:
        self.ctx = ctx
        self.state = state
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self.merge_inplace(self.app.conf.beat_schedule or {})
        self.install_default_entries(self.data)
        stored = self.state.load()
        resumed = 0
        for name, entry in self.data.items():
            row = stored.get(name)
            if row is not None and row.last_run_at is not None:
                entry.last_run_at = self._aware(row.last_run_at)
                entry.total_run_count = row.total_run_count
                resumed += 1
        self.state.reconcile(self.ctx, list(self.data))
        logger.info(
            "celery-master: beat of %r: %d entries, %d with stored state (epoch %d)",
            self.state.lock_name,
            len(self.data),
            resumed,
            self.ctx.epoch,
        )

    def _aware(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone(self.app.timezone)

    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        new_entry = next(entry)
        self.state.reserve(
            self.ctx, entry.name, new_entry.last_run_at.timestamp(), new_entry.total_run_count
        )
        self.schedule[entry.name] = new_entry
        return new_entry

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.ctx.is_master():
            return float(self.max_interval)
        try:
            return float(super().tick(*args, **kwargs))
        except NotMaster as exc:
            logger.warning("celery-master: beat send refused, %s", exc)
            return float(self.max_interval)

    def sync(self) -> None:
        """Nothing to flush: every reservation was written when it was made."""

    def close(self) -> None:
        self.sync()

    @property
    def info(self) -> str:
        return f"    . db -> celery-master lease database (lock {self.state.lock_name!r})"
