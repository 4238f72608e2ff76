"""Waiting, from outside the workers, for a lock name to change hands or to stop running.

Used by ``celery master release --wait`` and ``disable --wait``. It only reads
the lease row (database time, for people): what it reports is what an operator
would see with ``status``, polled until it changes. Decisions about mastership
stay with the workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..holder import Holder
from ..store.leases import Lease, LeaseStore

__all__ = [
    "Outcome",
    "lease_expired",
    "silent_for_a_ttl",
    "wait_for_new_holder",
    "wait_until_stopped",
]

POLL = 0.05


@dataclass(frozen=True)
class Outcome:
    """What the wait saw: the last lease read, and after how many seconds."""

    done: bool
    lease: Lease | None
    seconds: float

    @property
    def node(self) -> str | None:
        return Holder.node_of(self.lease.holder) if self.lease else None


def lease_expired(lease: Lease) -> bool:
    """The holder has not renewed for a whole ttl (database time): its worker is gone."""
    if lease.renewed_at is None or lease.ttl is None:
        return False
    return float(lease.now) >= float(lease.renewed_at) + float(lease.ttl)


def _poll(
    store: LeaseStore,
    lock_name: str,
    timeout: float,
    done: Callable[[Lease | None], bool],
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    start = clock()
    while True:
        lease = store.read([lock_name]).get(lock_name)
        elapsed = clock() - start
        if done(lease):
            return Outcome(True, lease, elapsed)
        if elapsed >= timeout:
            return Outcome(False, lease, elapsed)
        time.sleep(POLL)


def wait_for_new_holder(
    store: LeaseStore, lock_name: str, old_holder: str | None, timeout: float
) -> Outcome:
    """Until a worker other than ``old_holder`` holds a live lease of ``lock_name``."""

    def taken(lease: Lease | None) -> bool:
        return bool(
            lease is not None
            and lease.holder
            and lease.holder != old_holder
            and not lease_expired(lease)
        )

    return _poll(store, lock_name, timeout, taken)


def wait_until_stopped(store: LeaseStore, lock_name: str, timeout: float) -> Outcome:
    """Until no worker runs ``lock_name``: the lease is free, or its silent holder's expired."""

    def stopped(lease: Lease | None) -> bool:
        return lease is None or not lease.holder or lease_expired(lease)

    return _poll(store, lock_name, timeout, stopped)


def silent_for_a_ttl(
    store: LeaseStore,
    lease: Lease,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[int, int] | None:
    """Watch a held lease for a whole ttl on this process's clock, as a standby would.

    Returns the ``(epoch, renewals)`` seen unchanged the whole time (its holder
    is dead: a compare-and-set on it may act), or None once it changes or is
    freed. Database time is never used: the database host's clock may step.
    """
    seen = (lease.epoch, lease.renewals, lease.holder)
    ttl = float(lease.ttl or 0.0)
    until = clock() + ttl
    while True:
        now = store.read([lease.lock_name]).get(lease.lock_name)
        if now is None or (now.epoch, now.renewals, now.holder) != seen:
            return None
        if clock() >= until:
            return (lease.epoch, lease.renewals)
        sleep(min(POLL * 4, max(0.0, until - clock())))
