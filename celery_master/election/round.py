"""One round of the election: what is due, one transaction for all of it, and what follows.

A hint pulls the whole round forward and takes the freed names with the
conditional acquire directly (no read first); a takeover of a silent holder
goes in a transaction of its own, since it may wait on the old holder's fence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ..health import DatabaseHealth
from ..holder import Holder
from ..runtime import REAL, Runtime
from ..store.leases import LeaseStore
from ..store.rows import MemberBeat, Renewal
from .lockstate import Decision, LockState, Role
from .spread import Held, Spread
from .takeover import Takeovers
from .terms import SPREAD_REASON, Terms

__all__ = ["Round", "RoundParts"]

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: hints coalesce: the first after a quiet spell acts at once, a storm gets one round per 50 ms,
#: so junk hints cost the database at most 20 round trips a second per worker and a real
#: release waits at most this long behind them
HINT_SPACING = 0.05


@dataclass
class RoundParts:
    """What a round works with: the elector's lock states and the objects it shares."""

    locks: dict[str, LockState]
    store: LeaseStore
    terms: Terms
    spread: Spread
    health: DatabaseHealth
    holder: Holder
    clock: Callable[[], float]
    tick_period: float

    @property
    def holder_id(self) -> str:
        return str(self.holder)


class Round:
    def __init__(
        self,
        parts: RoundParts,
        on_tick: Callable[[float, bool], None] | None,
        runtime: Runtime = REAL,
    ) -> None:
        self.e = parts
        self.on_tick = on_tick
        timings = [lk.settings for lk in parts.locks.values()]
        check = min(s.check_interval for s in timings)
        self.member_period = max(check, min(s.ttl for s in timings) / 2)
        self.member_window = 3 * max(s.ttl for s in timings)
        self.grace = 2 * check  # a yielded or deferred lease waits this long for its receiver
        self.next_tick = 0.0
        self.next_member = 0.0
        self.refreshes = 0
        self.published: tuple[int, dict[str, int]] = (-1, {})  # this worker's member row
        self._yield_after = 0.0
        self._hinted: set[str] = set()
        self._hint_gate = 0.0  # hint-driven rounds wait until then (the first acts at once)
        self._lock = runtime.lock()
        self.takeovers = Takeovers(
            parts.store, parts.holder_id, parts.clock, runtime, parts.terms.wake
        )

    def hint(self, names: Iterable[str]) -> None:
        with self._lock:
            self._hinted.update(names)

    def run(self) -> float:
        """Serve everything if anything is due; returns the clock time of the next round."""
        e = self.e
        locks = list(e.locks.values())
        self.collect_takeover(leaving=False)
        self._aside(lambda: e.terms.free_stopped(locks))
        now = e.clock()
        self.next_tick = min(self.next_tick, self._next_due(now))  # a freed name is due now
        with self._lock:
            hinted, self._hinted = self._hinted, set()
            if hinted and now < self.next_tick and now < self._hint_gate:
                self._hinted = hinted  # a storm of hints: at most one round per spacing
                return min(self.next_tick, self._hint_gate)
        if not hinted and now < self.next_tick:
            return self.next_tick
        if hinted:
            self._hint_gate = now + HINT_SPACING
        held = [lk for lk in locks if lk.held]
        wanted = [lk for lk in locks if lk.wanted and lk.name not in self.takeovers.pending]
        take = [
            lk.name
            for lk in wanted
            if lk.name in hinted
            and now >= lk.hold_off_until
            and not e.spread.deferred(lk.name, lk.prefer)
        ]
        renew = {lk.name: self._renewal(lk, now) for lk in held}
        load = sum(lk.weight for lk in locks if lk.role is Role.MASTER)
        able = {  # weight 0: runs it, but may not take it now (start failures, a hold-off)
            lk.name: lk.weight if now >= lk.hold_off_until and not lk.start_failures else 0
            for lk in locks
        }
        # a changed row is published in this round: peers' spread must not act on a stale one
        due = now >= self.next_member or (load, able) != self.published
        member = self._member_beat(load, able) if due else None
        ttls = {lk.name: lk.settings.ttl for lk in locks}
        sent = e.clock()
        try:
            result = e.store.tick(
                e.holder_id, renew, take, [lk.name for lk in wanted], ttls, member
            )
        except Exception as exc:
            self._failed(held, sent, exc)
            return self.next_tick
        arrived = e.clock()
        e.health.ok()
        self._report(arrived - sent, True)
        self._renewed(held, result.renewed, sent, arrived)
        for name, epoch in result.taken.items():
            e.terms.begin(e.locks[name], epoch, sent)
        if result.members is not None:
            assert member is not None
            self.refreshes += 1
            self.published = (member.held, dict(member.locks))
            self.next_member = arrived + self.member_period
            e.spread.update(result.members)
        self._judge([lk for lk in wanted if lk.name not in result.taken], result.leases, arrived)
        if result.members is not None:
            self._yield_surplus(arrived)
        self.next_tick = self._next_due(arrived)
        return self.next_tick

    # -- building the round trip ------------------------------------------------
    def _renewal(self, lk: LockState, now: float) -> Renewal:
        assert lk.runner is not None and lk.epoch is not None
        progress = lk.runner.ctx.progress
        if progress is None:
            return Renewal(lk.epoch)
        at, within = progress
        return Renewal(lk.epoch, max(0.0, now - at), within)

    def _member_beat(self, held: int, able: dict[str, int]) -> MemberBeat:
        e = self.e
        return MemberBeat(
            e.holder_id,
            e.holder.node_name[:255],
            e.spread.app[:255],
            able,
            held,
            self.member_window,
            prune=self.refreshes % 20 == 0,
        )

    # -- applying what came back ------------------------------------------------
    def _failed(self, held: list[LockState], sent: float, exc: Exception) -> None:
        e = self.e
        if not e.health.is_db_error(exc):
            raise exc
        e.health.failed(exc)
        self._report(e.clock() - sent, False)
        for lk in held:
            lk.failures += 1
            lk.last_error = f"renewal failed: {type(exc).__name__}"
            if lk.failures >= lk.settings.max_heartbeat_retry_count:
                e.terms.step_down(lk, f"{lk.failures} renewals failed in a row")
        # masters retry at their heartbeat (their deadline runs regardless); standbys back off
        periods = [lk.settings.heartbeat_interval for lk in held] + [e.health.backoff]
        self.next_tick = sent + min(periods)

    def _renewed(
        self,
        held: list[LockState],
        renewed: dict[str, tuple[bool, bool]],
        sent: float,
        arrived: float,
    ) -> None:
        terms = self.e.terms
        for lk in held:
            flags = renewed.get(lk.name)
            if flags is None:
                lk.lost = True
                terms.step_down(lk, "lease lost: another worker holds a newer epoch")
                continue
            assert lk.runner is not None
            lk.failures, lk.last_sent, lk.last_error = 0, sent, None
            lk.runner.ctx.extend(sent + lk.settings.self_stop_after)
            enabled, release_requested = flags
            if not enabled:
                lk.enabled = False
                terms.step_down(lk, "disabled")
            elif release_requested:
                lk.hold_off_until = arrived + lk.settings.ttl
                terms.step_down(lk, "release requested")

    def _judge(self, wanted: list[LockState], leases: dict, arrived: float) -> None:
        e = self.e
        free: list[str] = []
        silent: dict[str, tuple[int, int, str | None]] = {}
        orphans: dict[str, int] = {}
        missing: list[str] = []
        for lk in wanted:
            lease = leases.get(lk.name)
            if lease is None:
                missing.append(lk.name)
                continue
            deferred = e.spread.deferred(lk.name, lk.prefer)
            decision = lk.observe(lease, arrived, e.holder_id, self.grace, deferred)
            if decision is Decision.TAKE_FREE:
                free.append(lk.name)
            elif decision is Decision.TAKE_SILENT:
                silent[lk.name] = lk.silent_value()
            elif decision is Decision.RELEASE_OWN:
                orphans[lk.name] = lease.epoch
        ttls = {n: e.locks[n].settings.ttl for n in [*free, *silent]}
        self.takeovers.submit(silent, ttls)  # apart: it may wait on the old holder's fence
        if orphans:  # won by a statement whose reply was lost: free it, take it next round
            why = dict.fromkeys(orphans, "its acquire's reply was lost")
            self._aside(lambda: e.store.release(e.holder_id, orphans, why))
        if missing:
            self._aside(lambda: e.store.ensure_rows(missing))
        if free:
            sent = e.clock()
            won = self._aside(lambda: e.store.acquire(e.holder_id, free, {}, ttls)) or {}
            for name, epoch in won.items():
                e.terms.begin(e.locks[name], epoch, sent)

    def _aside(self, statement: Callable[[], T]) -> T | None:
        """A statement beside the renewals: if it fails, the round goes on (the next retries).

        Renewals must never wait for it: a failed release or acquire is logged
        and left for the next round, never turned into a back-off of the loop.
        """
        try:
            return statement()
        except Exception as exc:
            if not self.e.health.is_db_error(exc):
                raise
            self.e.health.failed(exc)
            return None

    def collect_takeover(self, leaving: bool) -> None:
        """Start the terms a finished takeover won (or free them at once when leaving)."""
        self.takeovers.settle(self.e.locks, self.e.terms, leaving)

    def renewal_due(self, now: float) -> float:
        """When the next renewal must be sent: no failed statement may push a round past it."""
        due = [
            lk.last_sent + lk.settings.heartbeat_interval for lk in self.e.locks.values() if lk.held
        ]
        return min(due, default=now + 10 * self.e.tick_period)

    def _yield_surplus(self, now: float) -> None:
        """Hand over what a lighter candidate of the same lock should run instead."""
        e = self.e
        if now < self._yield_after:
            return
        mine = [Held(lk.name, lk.weight, lk.prefer) for lk in e.locks.values() if lk.held]
        for move in e.spread.moves(mine):
            lk = e.locks[move.lock_name]
            lk.yield_to = move.to_holder
            lk.hold_off_until = now + self.grace  # the receiver first; anyone after the grace
            reason = f"{SPREAD_REASON} handing over to {move.to_node} ({move.why})"
            e.terms.step_down(lk, reason)
            self._yield_after = now + self.member_period

    def _next_due(self, now: float) -> float:
        times = [now + 10 * self.e.tick_period]
        for lk in self.e.locks.values():
            if lk.held:
                times.append(lk.last_sent + lk.settings.heartbeat_interval)
            elif lk.wanted and lk.name not in self.takeovers.pending:
                times.append(lk.next_due)
            elif lk.runner is None:  # a release to retry
                times.append(now + self.e.health.backoff)
        return min(times)

    def _report(self, seconds: float, ok: bool) -> None:
        if self.on_tick is None:
            return
        try:
            self.on_tick(seconds, ok)
        except Exception:
            logger.exception("tick callback failed")
