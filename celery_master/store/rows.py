"""What the store hands back: rows as frozen values, never live ORM objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Lease", "Member", "MemberBeat", "Renewal", "TickResult"]


@dataclass(frozen=True)
class Lease:
    """One row of the lease table, as read."""

    lock_name: str
    holder: str | None
    epoch: int
    renewals: int
    ttl: float | None
    enabled: bool
    release_requested: bool
    yielded_to: str | None
    token: str | None
    acquired_at: float | None
    renewed_at: float | None
    changed_at: float | None
    changed_by: str | None
    reason: str | None
    progress_at: float | None
    progress_within: float | None
    now: float

    @property
    def lease_left(self) -> float | None:
        """Seconds of lease left by database time: for display only."""
        if not self.holder or self.renewed_at is None or self.ttl is None:
            return None
        return max(0.0, self.renewed_at + self.ttl - self.now)


@dataclass(frozen=True)
class Member:
    """A live worker instance: which app it belongs to and which lock names it runs."""

    holder: str
    node: str
    held: int
    app: str = ""
    locks: Mapping[str, int] = field(default_factory=dict)  # lock name -> weight
    seen_at: float = 0.0


@dataclass(frozen=True)
class MemberBeat:
    """This worker's membership row, refreshed inside a tick."""

    holder: str
    node: str
    app: str
    locks: Mapping[str, int]
    held: int
    window: float  # members seen within this many seconds (database time) are live
    prune: bool = False


@dataclass(frozen=True)
class Renewal:
    """A held lease to renew, with the job's last progress report if any."""

    epoch: int
    progress_age: float | None = None  # seconds since the job's last ctx.alive()
    progress_within: float | None = None


@dataclass(frozen=True)
class TickResult:
    """What one round trip of the election learnt."""

    renewed: dict[str, tuple[bool, bool]]  # name -> (enabled, release_requested)
    taken: dict[str, int]  # free leases won in this tick: name -> new epoch
    leases: dict[str, Lease]  # the wanted names, as read after the takes
    members: list[Member] | None  # None when membership was not due
