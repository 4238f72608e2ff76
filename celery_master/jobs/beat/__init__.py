"""HA beat: Celery's embedded beat as a master job, its schedule state in SQL under the epoch."""

from __future__ import annotations

from .job import BeatJob, beat_settings
from .scheduler import MasterScheduler

__all__ = ["BeatJob", "MasterScheduler", "beat_settings"]
