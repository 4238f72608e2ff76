"""Lease operations, each one conditional statement that cannot race.

Every state change states its precondition in its ``WHERE`` (free, silent
since a seen ``(epoch, renewals)``, held by me at my epoch, enabled) and
learns whether it won from ``RETURNING`` or ``rowcount``: never read, decide
in Python, then write. One statement covers all lock names of a worker, so the
database load grows with workers, not workers x lock names.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    and_,
    case,
    false,
    func,
    literal,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import ColumnElement

from ..errors import ConfigurationError
from .engine import Dialect, dialect_of
from .schema import SCHEMA_VERSION, add_missing_columns, build_tables

logger = logging.getLogger("celery_master")

__all__ = ["BEAT", "HISTORY", "LEASE", "MEMBER", "METADATA", "Lease", "LeaseStore", "Member"]

METADATA = MetaData()
LEASE, META, HISTORY, BEAT, MEMBER = build_tables(METADATA)


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
    yielded: bool
    token: str | None
    acquired_at: float | None
    renewed_at: float | None
    changed_at: float | None
    changed_by: str | None
    reason: str | None
    now: float

    @property
    def lease_left(self) -> float | None:
        """Seconds of lease left by database time: for display only."""
        if not self.holder or self.renewed_at is None or self.ttl is None:
            return None
        return max(0.0, self.renewed_at + self.ttl - self.now)


def db_now(dialect: Dialect) -> ColumnElement[float]:
    """The database clock as float seconds (sub-second precision on both dialects)."""
    if dialect is Dialect.POSTGRESQL:
        return func.extract("epoch", func.clock_timestamp())  # type: ignore[return-value]
    return (func.julianday("now") - literal(2440587.5)) * literal(86400.0)


@dataclass(frozen=True)
class Member:
    """A live worker instance, as the spread sees it."""

    holder: str
    node: str
    held: int


class LeaseStore:
    """The lease table of one database, shared by every lock name of a worker."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = dialect_of(engine.url)
        self.now = db_now(self.dialect)

    # -- schema -------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create missing tables and refuse a schema newer than this code."""
        with self.engine.begin() as conn:
            if self.dialect is Dialect.POSTGRESQL:  # workers booting together: one creates
                conn.execute(text("SELECT pg_advisory_xact_lock(7275318)"))
            METADATA.create_all(conn, checkfirst=True)
            for column in add_missing_columns(conn, METADATA):
                logger.warning("celery-master: upgraded the lease database: added %s", column)
        with self.engine.begin() as conn:
            conn.execute(
                self._insert(META)
                .values(key="schema_version", value=str(SCHEMA_VERSION))
                .on_conflict_do_nothing()
            )
            found = conn.execute(
                select(META.c.value).where(META.c.key == "schema_version")
            ).scalar_one()
        if int(found) > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the lease database has celery-master schema version {found}, newer than "
                f"this version supports ({SCHEMA_VERSION}): upgrade celery-master on this worker"
            )

    def _insert(self, table):  # type: ignore[no-untyped-def]
        return (pg_insert if self.dialect is Dialect.POSTGRESQL else sqlite_insert)(table)

    def ensure_rows(self, lock_names: Iterable[str]) -> None:
        """Insert a free, enabled row for each lock name that has none."""
        rows = [{"lock_name": n, "epoch": 0, "renewals": 0} for n in lock_names]
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(self._insert(LEASE).values(rows).on_conflict_do_nothing())

    # -- reads ----------------------------------------------------------------
    def read(self, lock_names: Iterable[str] | None = None) -> dict[str, Lease]:
        stmt = select(*LEASE.c, self.now.label("now"))
        if lock_names is not None:
            stmt = stmt.where(LEASE.c.lock_name.in_(list(lock_names)))
        with self.engine.connect() as conn:
            return {r.lock_name: Lease(**r._asdict()) for r in conn.execute(stmt)}

    # -- the election ----------------------------------------------------------
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
        conds: list[ColumnElement[bool]] = []
        free = list(free)
        if free:
            conds.append(and_(LEASE.c.lock_name.in_(free), LEASE.c.holder.is_(None)))
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
        now = self.now
        stmt = (
            LEASE.update()
            .where(LEASE.c.enabled == true(), or_(*conds))
            .values(
                holder=holder,
                epoch=LEASE.c.epoch + 1,
                renewals=0,
                ttl=case(dict(ttls), value=LEASE.c.lock_name, else_=LEASE.c.ttl),
                release_requested=false(),
                yielded=false(),
                token=uuid.uuid4().hex,
                acquired_at=now,
                renewed_at=now,
            )
            .returning(LEASE.c.lock_name, LEASE.c.epoch)
        )
        with self.engine.begin() as conn:
            won = {r.lock_name: r.epoch for r in conn.execute(stmt)}
            if won:
                self._record(conn, [(n, "acquired", holder, e, None) for n, e in won.items()])
            return won

    def renew(self, holder: str, held: Mapping[str, int]) -> dict[str, tuple[bool, bool]]:
        """Renew every lease still held at its epoch; {name: (enabled, release_requested)}.

        A name missing from the result was lost (taken over after silence): its
        job must stop at once. The flags tell the holder to step down itself,
        since only the holder ever ends its own lease.
        """
        if not held:
            return {}
        stmt = (
            LEASE.update()
            .where(
                LEASE.c.holder == holder,
                or_(*[and_(LEASE.c.lock_name == n, LEASE.c.epoch == e) for n, e in held.items()]),
            )
            .values(renewals=LEASE.c.renewals + 1, renewed_at=self.now)
            .returning(LEASE.c.lock_name, LEASE.c.enabled, LEASE.c.release_requested)
        )
        with self.engine.begin() as conn:
            return {r.lock_name: (r.enabled, r.release_requested) for r in conn.execute(stmt)}

    def release(
        self,
        holder: str,
        held: Mapping[str, int],
        details: Mapping[str, str] | None = None,
        yielded: Iterable[str] = (),
    ) -> list[str]:
        """Free the leases still held at their epoch; returns the names freed.

        ``yielded`` names are handed over by the spread: standbys over their quota
        leave them to the others for a grace period. Any other release is taken
        at once by whoever sees it first.
        """
        if not held:
            return []
        stmt = (
            LEASE.update()
            .where(
                LEASE.c.holder == holder,
                or_(*[and_(LEASE.c.lock_name == n, LEASE.c.epoch == e) for n, e in held.items()]),
            )
            .values(
                holder=None,
                release_requested=false(),
                yielded=case((LEASE.c.lock_name.in_(list(yielded)), true()), else_=false()),
                renewed_at=self.now,
            )
            .returning(LEASE.c.lock_name)
        )
        with self.engine.begin() as conn:
            freed = [r.lock_name for r in conn.execute(stmt)]
            if freed:
                why = details or {}
                self._record(conn, [(n, "released", holder, held[n], why.get(n)) for n in freed])
            return freed

    # -- operator actions (never end a held lease: they set flags) -------------
    def _not_stale(self, issued_at: float | None) -> ColumnElement[bool]:
        """A command issued before the lock's last change must not undo that change."""
        if issued_at is None:
            return true()
        return or_(LEASE.c.changed_at.is_(None), LEASE.c.changed_at <= issued_at)

    def set_enabled(
        self,
        lock_name: str,
        enabled: bool,
        who: str,
        reason: str | None,
        issued_at: float | None = None,
    ) -> tuple[bool, Lease]:
        """Persist enabled/disabled; returns (changed, lease). Idempotent across workers."""
        self.ensure_rows([lock_name])
        with self.engine.begin() as conn:
            changed = conn.execute(
                LEASE.update()
                .where(
                    LEASE.c.lock_name == lock_name,
                    LEASE.c.enabled == (not enabled),
                    self._not_stale(issued_at),
                )
                .values(enabled=enabled, changed_at=self.now, changed_by=who, reason=reason)
            ).rowcount
            if changed:
                event = "enabled" if enabled else "disabled"
                self._record(conn, [(lock_name, event, who, None, reason)])
        return bool(changed), self.read([lock_name])[lock_name]

    def request_release(
        self,
        lock_name: str,
        who: str,
        issued_at: float | None = None,
        holder: str | None = None,
        epoch: int | None = None,
    ) -> tuple[bool, Lease | None]:
        """Ask the holder to step down; returns (requested, lease).

        ``holder``/``epoch``: only that term (a broadcast release is applied by
        the holder at receipt, never to the next term).
        """
        term = true() if holder is None else and_(LEASE.c.holder == holder, LEASE.c.epoch == epoch)
        with self.engine.begin() as conn:
            changed = conn.execute(
                LEASE.update()
                .where(
                    LEASE.c.lock_name == lock_name,
                    LEASE.c.holder.is_not(None),
                    term,
                    LEASE.c.release_requested == false(),
                    self._not_stale(issued_at),
                )
                .values(release_requested=true(), changed_at=self.now, changed_by=who)
            ).rowcount
            if changed:
                self._record(conn, [(lock_name, "release-requested", who, None, None)])
        return bool(changed), self.read([lock_name]).get(lock_name)

    # -- membership (spread only: liveness by database time is fine here) -----
    def heartbeat_member(
        self, holder: str, node: str, held: int, window: float, prune: bool = False
    ) -> list[Member]:
        """Say this worker is alive and return the workers seen within ``window`` seconds."""
        with self.engine.begin() as conn:
            conn.execute(
                self._insert(MEMBER)
                .values(holder=holder, node=node, held=held, seen_at=self.now)
                .on_conflict_do_update(
                    index_elements=[MEMBER.c.holder], set_={"held": held, "seen_at": self.now}
                )
            )
            rows = conn.execute(
                select(MEMBER.c.holder, MEMBER.c.node, MEMBER.c.held).where(
                    MEMBER.c.seen_at > self.now - window
                )
            )
            members = [Member(r.holder, r.node, r.held) for r in rows]
            if prune:  # rows of crashed workers; now and then is enough
                conn.execute(MEMBER.delete().where(MEMBER.c.seen_at < self.now - 10 * window))
        return members

    def leave_member(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(MEMBER.delete().where(MEMBER.c.holder == holder))

    def db_time(self) -> float:
        with self.engine.connect() as conn:
            return float(conn.execute(select(self.now)).scalar_one())

    def history(self, lock_name: str, limit: int = 50) -> list[dict[str, object]]:
        stmt = (
            select(HISTORY)
            .where(HISTORY.c.lock_name == lock_name)
            .order_by(HISTORY.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    HISTORY_KEEP = 10_000  # rows over all lock names; one trim per state change

    def _record(self, conn: Connection, events: list[tuple]) -> None:  # type: ignore[type-arg]
        """Append history rows in the caller's transaction; keep the table bounded."""
        conn.execute(
            HISTORY.insert().values(at=self.now),
            [
                {"lock_name": n, "event": ev, "holder": h, "epoch": e, "detail": d}
                for n, ev, h, e, d in events
            ],
        )
        newest = select(func.max(HISTORY.c.id)).scalar_subquery()
        conn.execute(HISTORY.delete().where(HISTORY.c.id <= newest - self.HISTORY_KEEP))

    # -- fencing ---------------------------------------------------------------
    def fence(
        self, conn: Connection, lock_name: str, epoch: int, holder: str, hold_ms: int
    ) -> bool:
        """True if (lock_name, epoch, holder) is current, locked until ``conn`` commits.

        PostgreSQL: ``FOR SHARE`` makes a takeover's UPDATE wait for the caller's
        transaction, and a local idle timeout below the ttl keeps a paused caller
        from holding it. SQLite: a no-op UPDATE takes the write lock for the same
        effect (SQLite has one writer at a time).
        """
        cond = and_(
            LEASE.c.lock_name == lock_name, LEASE.c.epoch == epoch, LEASE.c.holder == holder
        )
        if self.dialect is Dialect.POSTGRESQL:
            conn.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {int(hold_ms)}"))
            conn.execute(text(f"SET LOCAL lock_timeout = {int(hold_ms)}"))  # a busy lease table
            row = conn.execute(select(LEASE.c.epoch).where(cond).with_for_update(read=True))
            current = row.first() is not None
            conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))  # the caller's writes: theirs
            return current
        return conn.execute(LEASE.update().where(cond).values(epoch=LEASE.c.epoch)).rowcount == 1
