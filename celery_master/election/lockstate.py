"""One lock name as this worker sees it, and the rules that judge what was read of it.

The rules that keep S1 (at most one master) without trusting any wall clock:

* a lease that names a holder is taken over only after this worker has itself
  seen ``(holder, epoch, renewals, token)`` unchanged for a whole ttl on its
  own clock, measured from when that value *arrived*, and only with a
  compare-and-set on exactly that value;
* a free lease (released, or new) is taken at once, unless the spread yielded
  it to another worker: then only after a grace, so availability never waits
  for balance.

Pure logic over a clock value handed in: unit tests drive it without threads.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..jobs.job import MasterJob
from ..settings import JobSettings
from ..store.rows import Lease

if TYPE_CHECKING:
    from ..jobs.runner import Runner

__all__ = ["Decision", "LockState", "Role"]


class Role(str, enum.Enum):
    MASTER = "master"
    STANDBY = "standby"
    DISABLED = "disabled"


class Decision(enum.Enum):
    WAIT = "wait"  # nothing to do before ``next_due``
    TAKE_FREE = "take-free"  # a free lease this worker may take now
    TAKE_SILENT = "take-silent"  # a holder silent for a whole ttl: compare-and-set on ``seen``
    RELEASE_OWN = "release-own"  # held under this worker's id, unknown to it: a lost reply


Seen = tuple[str, int, int, "str | None"]  # holder, epoch, renewals, token


@dataclass
class LockState:
    """The elector's view of one lock name."""

    job: MasterJob
    settings: JobSettings
    runner: Runner | None = None
    epoch: int | None = None  # epoch of the lease held in SQL, until freed or lost
    lost: bool = False
    failures: int = 0  # renewals failed in a row
    start_failures: int = 0
    last_sent: float = 0.0  # when the last successful renewal (or the acquire) was sent
    next_due: float = 0.0  # when this name next needs a round trip
    hold_off_until: float = 0.0
    seen: Seen | None = None
    seen_at: float = 0.0
    free_since: float | None = None
    enabled: bool = True
    holder_seen: str | None = None
    yield_to: str | None = None  # the holder a spread hand-over goes to
    since: float = field(default_factory=time.time)  # wall time, for display only
    last_error: str | None = None
    stop_reason: str | None = None

    @property
    def name(self) -> str:
        return self.job.lock_name

    @property
    def weight(self) -> int:
        return int(self.job.options.get("weight", 1))

    @property
    def prefer(self) -> str | None:
        return self.job.options.get("prefer")

    @property
    def held(self) -> bool:
        """A running term whose lease this worker keeps renewing."""
        return self.runner is not None and not self.runner.stepping_down and self.epoch is not None

    @property
    def wanted(self) -> bool:
        """No term of ours, no lease of ours: a standby for this name."""
        return self.runner is None and self.epoch is None

    @property
    def role(self) -> Role:
        if self.runner is not None and not self.runner.stepping_down:
            return Role.MASTER
        return Role.STANDBY if self.enabled else Role.DISABLED

    def observe(
        self, lease: Lease, arrived: float, me: str, grace: float, deferred: bool
    ) -> Decision:
        """Judge a read of this (wanted) name; sets ``next_due`` for the next look.

        ``deferred``: the spread says another live worker should try first
        (``prefer``); it then waits the grace like for a lease yielded elsewhere.
        """
        self.enabled, self.holder_seen = lease.enabled, lease.holder
        self.next_due = arrived + self.settings.check_interval
        if lease.holder == me:  # an acquire committed but its reply never came: free it now
            self.seen, self.next_due = None, arrived
            return Decision.RELEASE_OWN
        if lease.holder is not None or not lease.enabled:
            self.free_since = None
        if not lease.enabled:
            self.seen = None
            return Decision.WAIT
        if lease.holder is None:
            self.seen = None
            self.free_since = arrived if self.free_since is None else self.free_since
            mine = lease.yielded_to in (None, me) and not deferred
            waited = arrived - self.free_since
            if arrived < self.hold_off_until:
                self.next_due = min(self.next_due, self.hold_off_until)
                return Decision.WAIT
            if mine or waited >= grace:
                return Decision.TAKE_FREE
            self.next_due = min(self.next_due, self.free_since + grace)
            return Decision.WAIT
        seen: Seen = (lease.holder, lease.epoch, lease.renewals, lease.token)
        if self.seen != seen:
            self.seen, self.seen_at = seen, arrived
        ttl = max(lease.ttl or 0.0, self.settings.ttl)
        if arrived - self.seen_at >= ttl:
            return Decision.TAKE_SILENT  # a dead holder: take over at once (L1)
        self.next_due = min(self.next_due, self.seen_at + ttl)
        return Decision.WAIT

    def silent_value(self) -> tuple[int, int, str | None]:
        assert self.seen is not None
        _, epoch, renewals, token = self.seen
        return epoch, renewals, token
