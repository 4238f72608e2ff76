"""Lease statements, each one conditional statement that cannot race.

Every state change states its precondition in its ``WHERE`` (free, silent
since a seen ``(epoch, renewals, token)``, held by me at my epoch, enabled)
and learns whether it won from ``RETURNING``: never read, decide in Python,
then write unconditionally. One statement covers all lock names of a worker,
and one transaction (``tick``) carries a worker's whole round of the
election, so the database load grows with workers, not workers x lock names.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    case,
    false,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import ColumnElement

from .engine import Dialect, dialect_of
from .fence import fence_term
from .floors import read_floors
from .history import record
from .members import beat_member, leave_member, read_members
from .operator import OperatorStatements
from .rows import Lease, Member, MemberBeat, Renewal, TickResult
from .setup import SchemaSetup, SchemaTooNew
from .tables import BEAT, HISTORY, LEASE, MEMBER, META, METADATA, db_now

logger = logging.getLogger(__name__)

__all__ = [
    "BEAT",
    "HISTORY",
    "LEASE",
    "MEMBER",
    "META",
    "METADATA",
    "Lease",
    "LeaseStore",
    "Member",
    "SchemaTooNew",
]


class LeaseStore(SchemaSetup, OperatorStatements):
    """The lease tables of one database, shared by every lock name of a worker."""

    def __init__(self, engine: Engine, now: ColumnElement[float] | None = None) -> None:
        """``now``: the database-time expression; the simulation hands in virtual time."""
        self.engine = engine
        self.dialect = dialect_of(engine.url)
        self.now = db_now(self.dialect) if now is None else now

    def _insert(self, table: Any) -> Any:
        return (pg_insert if self.dialect is Dialect.POSTGRESQL else sqlite_insert)(table)

    def ensure_rows(self, lock_names: Iterable[str]) -> None:
        """Insert a free, enabled row for each lock name that has none, from its epoch floor."""
        names = list(lock_names)
        if not names:
            return
        with self.engine.begin() as conn:
            floors = read_floors(conn, names)
            rows = [{"lock_name": n, "epoch": floors.get(n, 0), "renewals": 0} for n in names]
            conn.execute(self._insert(LEASE).values(rows).on_conflict_do_nothing())

    # -- reads ----------------------------------------------------------------
    def read(self, lock_names: Iterable[str] | None = None) -> dict[str, Lease]:
        with self.engine.connect() as conn:
            return self._read(conn, None if lock_names is None else list(lock_names))

    def _read(self, conn: Connection, names: Sequence[str] | None) -> dict[str, Lease]:
        stmt = select(*LEASE.c, self.now.label("now"))
        if names is not None:
            if not names:
                return {}
            stmt = stmt.where(LEASE.c.lock_name.in_(list(names)))
        return {r.lock_name: Lease(**r._asdict()) for r in conn.execute(stmt)}

    def members(self, window: float | None = None) -> list[Member]:
        """Workers seen within ``window`` seconds of database time (None: every row)."""
        with self.engine.connect() as conn:
            return read_members(conn, self.now, window)

    def db_time(self) -> float:
        with self.engine.connect() as conn:
            return float(conn.execute(select(self.now)).scalar_one())

    # -- the election -----------------------------------------------------------
    def tick(
        self,
        holder: str,
        renew: Mapping[str, Renewal],
        take: Sequence[str],
        read: Sequence[str],
        ttls: Mapping[str, float],
        member: MemberBeat | None = None,
    ) -> TickResult:
        """One worker's whole round, in one transaction: renew, take hinted free leases, read.

        ``take`` names were announced free by a hint: they are taken with the
        conditional acquire at once (no read first); the rest of ``read`` is
        returned for the caller to judge (silent holders are taken over in a
        separate transaction by ``acquire``, since a takeover may wait on a fence).
        """
        with self.engine.begin() as conn:
            renewed = self._renew(conn, holder, renew) if renew else {}
            taken = self._acquire(conn, holder, take, {}, ttls, respect_yield=True) if take else {}
            wanted = [n for n in read if n not in taken]
            leases = self._read(conn, wanted) if wanted else {}
            members = beat_member(conn, self.now, self._insert, member) if member else None
        return TickResult(renewed, taken, leases, members)

    def acquire(
        self,
        holder: str,
        free: Iterable[str],
        silent: Mapping[str, tuple[int, int, str | None]],
        ttls: Mapping[str, float],
    ) -> dict[str, int]:
        """Take free leases, and silent ones still at the seen (epoch, renewals, token).

        Returns {lock_name: new epoch} for the names won. The epoch bump is the
        fencing token: the previous holder's renewals and fenced writes fail.
        """
        with self.engine.begin() as conn:
            return self._acquire(conn, holder, list(free), silent, ttls)

    def _acquire(
        self,
        conn: Connection,
        holder: str,
        free: Sequence[str],
        silent: Mapping[str, tuple[int, int, str | None]],
        ttls: Mapping[str, float],
        respect_yield: bool = False,
    ) -> dict[str, int]:
        """``respect_yield``: a lease the spread yielded to another worker is left to it
        (the hint path, which has not read the row; the read path judged the grace)."""
        conds: list[ColumnElement[bool]] = []
        if free:
            cond = and_(LEASE.c.lock_name.in_(list(free)), LEASE.c.holder.is_(None))
            if respect_yield:
                cond = and_(cond, or_(LEASE.c.yielded_to.is_(None), LEASE.c.yielded_to == holder))
            conds.append(cond)
        for name, (epoch, renewals, token) in silent.items():
            conds.append(
                and_(
                    LEASE.c.lock_name == name,
                    LEASE.c.epoch == epoch,
                    LEASE.c.renewals == renewals,
                    LEASE.c.token.is_not_distinct_from(token),
                )
            )
        if not conds:
            return {}
        where = and_(LEASE.c.enabled == true(), or_(*conds))
        if self.dialect is Dialect.POSTGRESQL:
            # lock the row FOR UPDATE first: a fence (FOR KEY SHARE) makes the takeover wait
            # until the fenced transaction has ended, while the holder's renewals go on
            locked = select(LEASE.c.lock_name).where(where).with_for_update()
            where = and_(where, LEASE.c.lock_name.in_(locked))
        stmt = (
            LEASE.update()
            .where(where)
            .values(
                holder=holder,
                epoch=LEASE.c.epoch + 1,
                renewals=0,
                ttl=case(dict(ttls), value=LEASE.c.lock_name, else_=LEASE.c.ttl),
                release_requested=false(),
                yielded_to=None,
                token=uuid.uuid4().hex,
                acquired_at=self.now,
                renewed_at=self.now,
                progress_at=None,
                progress_within=None,
            )
            .returning(LEASE.c.lock_name, LEASE.c.epoch)
        )
        won = {r.lock_name: r.epoch for r in conn.execute(stmt)}
        record(conn, self.now, [(n, "acquired", holder, e, None) for n, e in won.items()])
        return won

    def renew(self, holder: str, held: Mapping[str, int]) -> dict[str, tuple[bool, bool]]:
        """Renew every lease still held at its epoch; {name: (enabled, release_requested)}."""
        with self.engine.begin() as conn:
            return self._renew(conn, holder, {n: Renewal(e) for n, e in held.items()})

    def _renew(
        self, conn: Connection, holder: str, held: Mapping[str, Renewal]
    ) -> dict[str, tuple[bool, bool]]:
        """A name missing from the result was lost (taken over after silence): its job
        must stop at once. The flags tell the holder to step down itself, since only
        the holder ever ends its own lease."""
        values: dict[str, Any] = {"renewals": LEASE.c.renewals + 1, "renewed_at": self.now}
        reports = {n: r for n, r in held.items() if r.progress_age is not None}
        if reports:
            ages = {n: literal(max(0.0, float(r.progress_age or 0.0))) for n, r in reports.items()}
            values["progress_at"] = case(
                {n: self.now - age for n, age in ages.items()},
                value=LEASE.c.lock_name,
                else_=LEASE.c.progress_at,
            )
            values["progress_within"] = case(
                {n: r.progress_within for n, r in reports.items()},
                value=LEASE.c.lock_name,
                else_=LEASE.c.progress_within,
            )
        stmt = (
            LEASE.update()
            .where(
                LEASE.c.holder == holder,
                or_(
                    *[
                        and_(LEASE.c.lock_name == n, LEASE.c.epoch == r.epoch)
                        for n, r in held.items()
                    ]
                ),
            )
            .values(**values)
            .returning(LEASE.c.lock_name, LEASE.c.enabled, LEASE.c.release_requested)
        )
        return {r.lock_name: (r.enabled, r.release_requested) for r in conn.execute(stmt)}

    def release(
        self,
        holder: str,
        held: Mapping[str, int],
        details: Mapping[str, str] | None = None,
        yielded_to: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Free the leases still held at their epoch; returns the names freed.

        ``yielded_to`` names the worker the spread hands a lease to: it (or a
        worker under quota) takes it at once, others only after a grace. Any other
        release is taken at once by whoever sees it first.
        """
        if not held:
            return []
        targets = dict(yielded_to or {})
        stmt = (
            LEASE.update()
            .where(
                LEASE.c.holder == holder,
                or_(*[and_(LEASE.c.lock_name == n, LEASE.c.epoch == e) for n, e in held.items()]),
            )
            .values(
                holder=None,
                release_requested=false(),
                yielded_to=case(targets, value=LEASE.c.lock_name, else_=None) if targets else None,
                renewed_at=self.now,
            )
            .returning(LEASE.c.lock_name)
        )
        with self.engine.begin() as conn:
            freed = [r.lock_name for r in conn.execute(stmt)]
            why = details or {}
            record(conn, self.now, [(n, "released", holder, held[n], why.get(n)) for n in freed])
            return freed

    def leave_member(self, holder: str) -> None:
        with self.engine.begin() as conn:
            leave_member(conn, holder)

    # -- fencing ---------------------------------------------------------------
    def fence(
        self,
        conn: Connection,
        lock_name: str,
        epoch: int,
        holder: str,
        hold_ms: int,
        busy_ms: int | None = None,
    ) -> bool:
        """True if (lock_name, epoch, holder) is current, held so until ``conn`` commits."""
        return fence_term(conn, self.dialect, lock_name, epoch, holder, hold_ms, busy_ms)
