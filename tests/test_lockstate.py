"""The per-lock rules on a clock we move: when a standby may take a lease, and when not."""

from __future__ import annotations

from celery_master.election.lockstate import Decision, LockState
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store.rows import Lease

TIMING = JobSettings(
    init_delay=1, check_interval=1, heartbeat_interval=1, max_heartbeat_retry_count=3
)
TTL = TIMING.ttl  # 4 s
ME = "me@h:1:x"


def lease(holder=None, epoch=1, renewals=0, token="t1", enabled=True, yielded_to=None) -> Lease:
    return Lease(
        lock_name="L",
        holder=holder,
        epoch=epoch,
        renewals=renewals,
        ttl=TTL,
        enabled=enabled,
        release_requested=False,
        yielded_to=yielded_to,
        token=token,
        acquired_at=None,
        renewed_at=None,
        changed_at=None,
        changed_by=None,
        reason=None,
        progress_at=None,
        progress_within=None,
        now=0.0,
    )


def state() -> LockState:
    return LockState(MasterJob("L", lambda ctx: None), TIMING)


def look(lk: LockState, row: Lease, at: float, grace: float = 2.0, deferred=False) -> Decision:
    return lk.observe(row, at, ME, grace, deferred)


def test_a_held_lease_is_taken_over_only_after_a_whole_ttl_of_the_same_value():
    lk = state()
    assert look(lk, lease("h", renewals=5), 100.0) is Decision.WAIT
    assert lk.next_due == 101.0, "next look at the check interval"
    assert look(lk, lease("h", renewals=5), 100.0 + TTL - 0.01) is Decision.WAIT
    assert look(lk, lease("h", renewals=5), 100.0 + TTL) is Decision.TAKE_SILENT
    assert lk.silent_value() == (1, 5, "t1")


def test_every_renewal_restarts_the_standbys_ttl_whatever_its_clock_says():
    """A clock that jumps ahead between looks cannot steal a lease that is being renewed."""
    lk = state()
    at = 0.0
    for renewals in range(10):
        at += 3600.0  # an hour per look, as a stepped clock would show
        assert look(lk, lease("h", renewals=renewals), at) is Decision.WAIT
    assert look(lk, lease("h", renewals=9), at + TTL) is Decision.TAKE_SILENT


def test_a_new_token_is_a_new_term_even_at_the_same_epoch_and_renewals():
    lk = state()
    look(lk, lease("h", token="a"), 0.0)
    assert look(lk, lease("h", token="b"), TTL) is Decision.WAIT
    assert lk.next_due == TTL + 1.0


def test_the_next_look_is_when_the_watched_ttl_runs_out_not_a_slow_check_later():
    slow = LockState(MasterJob("L", lambda ctx: None), JobSettings(1, 30, 1, 3))
    look(slow, lease("h"), 10.0)
    assert slow.next_due == 10.0 + TTL


def test_a_free_lease_is_taken_at_once_unless_yielded_to_another_worker():
    assert look(state(), lease(), 0.0) is Decision.TAKE_FREE
    assert look(state(), lease(yielded_to=ME), 0.0) is Decision.TAKE_FREE
    lk = state()
    assert look(lk, lease(yielded_to="other@h:2:y"), 0.0) is Decision.WAIT
    assert lk.next_due == 1.0
    assert look(lk, lease(yielded_to="other@h:2:y"), 1.99) is Decision.WAIT
    assert look(lk, lease(yielded_to="other@h:2:y"), 2.0) is Decision.TAKE_FREE, "after the grace"


def test_a_deferred_worker_waits_the_grace_then_takes_it_anyway():
    lk = state()
    assert look(lk, lease(), 0.0, deferred=True) is Decision.WAIT
    assert look(lk, lease(), 2.0, deferred=True) is Decision.TAKE_FREE


def test_hold_off_delays_a_free_lease_but_keeps_looking():
    lk = state()
    lk.hold_off_until = 5.0
    assert look(lk, lease(), 0.0) is Decision.WAIT
    assert lk.next_due == 1.0
    assert look(lk, lease(), 4.5) is Decision.WAIT and lk.next_due == 5.0
    assert look(lk, lease(), 5.0) is Decision.TAKE_FREE


def test_a_disabled_lease_is_never_taken_and_forgets_what_was_seen():
    lk = state()
    look(lk, lease("h"), 0.0)
    assert look(lk, lease("h", enabled=False), TTL * 2) is Decision.WAIT
    assert look(lk, lease(enabled=False), TTL * 3) is Decision.WAIT
    assert lk.seen is None and lk.enabled is False


def test_the_watchdog_stops_a_term_at_its_deadline_and_sleeps_until_the_next():
    """Whatever the elector does (it may hang in a statement), the deadline holds."""
    from celery_master.election.watchdog import Watchdog
    from celery_master.jobs.job import MasterContext
    from celery_master.jobs.runner import Runner

    now = [100.0]
    a, b = state(), state()
    a.runner = Runner(a.job, MasterContext("A", 1, ME, deadline=101.0, clock=lambda: now[0]), 1.0)
    b.runner = Runner(b.job, MasterContext("B", 1, ME, deadline=103.0, clock=lambda: now[0]), 1.0)
    stopped: list[tuple[str, str]] = []
    dog = Watchdog(
        lambda: [a, b], lambda lk, why: stopped.append((lk.name, why)), lambda: now[0], 5
    )
    assert dog.check() == 1.0 and stopped == [], "wakes when the first deadline is due"
    now[0] = 101.0
    assert dog.check() == 2.0
    assert [name for name, _ in stopped] == ["L"] and "deadline passed" in stopped[0][1]
