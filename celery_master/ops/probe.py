"""Judging lock names for monitoring: ``celery master status --check`` and its exit codes.

This is monitoring, not mastership: a lease is judged *live* by database time
(``renewed_at + ttl`` against the database clock), which is fine for an alarm
and never used by the election. A master whose job reports progress
(``ctx.alive(within)``) is unhealthy once its last report is older than
``within`` plus one renewal (the report reaches the row with the next renewal).

Exit codes, Nagios style, the worst one wins (3 > 2 > 1 > 0):
0 every lock name checked has a live master; 1 one is disabled (a warning:
an operator chose it); 2 one has no master, an expired lease or a stalled job;
3 the lease database cannot be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..holder import Holder
from ..store.leases import Lease
from .printable import printable

__all__ = [
    "DISABLED",
    "NO_MASTER",
    "OK",
    "UNREADABLE",
    "Finding",
    "exit_code",
    "judge",
    "judge_all",
    "lease_left",
    "progress_age",
]

OK, DISABLED, NO_MASTER, UNREADABLE = 0, 1, 2, 3
LABELS = {DISABLED: "WARNING", NO_MASTER: "CRITICAL", UNREADABLE: "UNKNOWN"}


@dataclass(frozen=True)
class Finding:
    """One problem with one lock name (or with the database, lock_name None)."""

    lock_name: str | None
    code: int
    message: str

    def line(self) -> str:
        """One line whatever the stored text in it (see printable)."""
        where = f"{self.lock_name}: " if self.lock_name is not None else ""
        return printable(f"{LABELS.get(self.code, 'OK')} {where}{self.message}")


def progress_age(lease: Lease) -> float | None:
    """Seconds since the master's job last reported progress (database time), if it ever did."""
    at = lease.progress_at
    if at is None or not lease.holder:
        return None
    return max(0.0, float(lease.now) - float(at))


def lease_left(lease: Lease) -> float | None:
    """Seconds of lease left by database time (PostgreSQL hands ``now`` back as a Decimal)."""
    if not lease.holder or lease.renewed_at is None or lease.ttl is None:
        return None
    return max(0.0, float(lease.renewed_at) + float(lease.ttl) - float(lease.now))


def judge(lock_name: str, lease: Lease | None, renewal: float) -> Finding | None:
    """The problem with one lock name, or None when it has a live, progressing master.

    ``renewal`` is the heartbeat interval of the lock: a progress report waits
    up to one renewal before it reaches the row.
    """
    if lease is None:
        return Finding(lock_name, NO_MASTER, "no lease row: no worker has run this lock name")
    if not lease.enabled:
        by = f" by {lease.changed_by}" if lease.changed_by else ""
        why = f": {lease.reason}" if lease.reason else ""
        return Finding(lock_name, DISABLED, f"disabled{by}{why}")
    if not lease.holder:
        return Finding(lock_name, NO_MASTER, "no master (the lease is free)")
    node = Holder.node_of(lease.holder)
    if lease.renewed_at is not None and lease.ttl is not None:
        late = float(lease.now) - (float(lease.renewed_at) + float(lease.ttl))
        if late >= 0:
            return Finding(
                lock_name, NO_MASTER, f"lease of {node} expired {late:.1f}s ago (holder silent)"
            )
    age = progress_age(lease)
    within = lease.progress_within
    if within is not None and age is not None and age > within + renewal:
        return Finding(
            lock_name,
            NO_MASTER,
            f"master {node} holds the lease but its job last reported progress "
            f"{age:.1f}s ago (due every {within:g}s)",
        )
    return None


def judge_all(
    names: Iterable[str], leases: Mapping[str, Lease], renewals: Mapping[str, float]
) -> list[Finding]:
    """Every problem among ``names``, in name order."""
    found = []
    for name in sorted(set(names)):
        finding = judge(name, leases.get(name), renewals.get(name, 1.0))
        if finding is not None:
            found.append(finding)
    return found


def exit_code(findings: Iterable[Finding]) -> int:
    return max((f.code for f in findings), default=OK)
