"""The exceptions celery-master raises, and what to catch.

::

    CeleryMasterError            base of everything below
     +-- ConfigurationError      a bad setting, option or registration: fix your code/config
     +-- NotMaster               a fenced write was refused: this worker's epoch is stale

Infrastructure faults (database or broker down) are never raised into Celery:
the elector retries them with backoff and logs each change of state once.
"""

from __future__ import annotations

__all__ = ["CeleryMasterError", "ConfigurationError", "NotMaster"]


class CeleryMasterError(Exception):
    """Base class of every error celery-master raises on purpose."""


class ConfigurationError(CeleryMasterError, ValueError):
    """A setting, option or registration is invalid; the message names the fix."""


class NotMaster(CeleryMasterError):
    """This worker is no longer master of the lock name (its epoch is stale)."""

    def __init__(self, lock_name: str, epoch: int, reason: str = "") -> None:
        self.lock_name = lock_name
        self.epoch = epoch
        msg = f"not master of {lock_name!r} at epoch {epoch}"
        super().__init__(f"{msg}: {reason}" if reason else msg)
