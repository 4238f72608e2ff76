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

__all__ = ["Outcome", "lease_expired", "wait_for_new_holder", "wait_until_stopped"]

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
