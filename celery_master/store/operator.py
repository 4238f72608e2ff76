"""What operators change: enable, disable, release requests, forgetting a lock name.

None of these ends a held lease: they set flags the holder sees in its next
renewal (only the holder ends its own lease). Each is one conditional
statement; a command issued before the lock's last change cannot undo it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, false, literal, or_, true
from sqlalchemy.sql import ColumnElement

from .floors import raise_floor
from .history import read_history, record
from .rows import Lease
from .tables import LEASE

__all__ = ["OperatorStatements"]


class OperatorStatements:
    """Mixed into LeaseStore."""

    engine: Engine
    now: ColumnElement[float]

    if TYPE_CHECKING:

        def ensure_rows(self, lock_names: Iterable[str]) -> None: ...

        def read(self, lock_names: Iterable[str] | None = None) -> dict[str, Lease]: ...

    def _not_stale(self, received_ago: float | None) -> ColumnElement[bool]:
        """A command must not undo a change made after it was received.

        ``received_ago``: seconds since the command was received, on the
        receiving worker's monotonic clock; the lock must not have changed
        since database time ``now - received_ago``. So a command whose
        statement runs late (after its reply said the outcome was unknown)
        still cannot undo a newer change. No time a sender wrote is trusted.
        """
        if received_ago is None:
            return true()
        since = self.now - literal(max(0.0, float(received_ago)))
        return or_(LEASE.c.changed_at.is_(None), LEASE.c.changed_at <= since)

    def set_enabled(
        self,
        lock_name: str,
        enabled: bool,
        who: str,
        reason: str | None,
        received_ago: float | None = None,
    ) -> tuple[bool, Lease]:
        """Persist enabled/disabled; returns (changed, lease). Idempotent across workers."""
        self.ensure_rows([lock_name])
        with self.engine.begin() as conn:
            changed = conn.execute(
                LEASE.update()
                .where(
                    LEASE.c.lock_name == lock_name,
                    LEASE.c.enabled == (not enabled),
                    self._not_stale(received_ago),
                )
                .values(enabled=enabled, changed_at=self.now, changed_by=who, reason=reason)
            ).rowcount
            if changed:
                event = "enabled" if enabled else "disabled"
                record(conn, self.now, [(lock_name, event, who, None, reason)])
        return bool(changed), self.read([lock_name])[lock_name]

    def request_release(
        self,
        lock_name: str,
        who: str,
        received_ago: float | None = None,
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
                    self._not_stale(received_ago),
                )
                .values(release_requested=true(), changed_at=self.now, changed_by=who)
            ).rowcount
            if changed:
                record(conn, self.now, [(lock_name, "release-requested", who, None, None)])
        return bool(changed), self.read([lock_name]).get(lock_name)

    def forget(self, lock_name: str, who: str, seen: tuple[int, int] | None = None) -> bool:
        """Remove the row of a lock name nobody holds; True if it was removed. Its history stays.

        A held row goes only with ``seen``: the ``(epoch, renewals)`` the caller
        has watched unchanged for a whole ttl on its own monotonic clock (a dead
        holder), compared and deleted in one statement; never judged by
        database time, whose clock may step. Its epoch becomes the name's floor,
        so a re-created row never repeats an epoch.
        """
        unheld: ColumnElement[bool] = LEASE.c.holder.is_(None)
        if seen is not None:
            unheld = or_(unheld, and_(LEASE.c.epoch == seen[0], LEASE.c.renewals == seen[1]))
        with self.engine.begin() as conn:
            gone = conn.execute(
                LEASE.delete()
                .where(LEASE.c.lock_name == lock_name, unheld)
                .returning(LEASE.c.epoch)
            ).scalar()
            if gone is not None:
                raise_floor(conn, lock_name, int(gone))
                record(conn, self.now, [(lock_name, "forgotten", who, int(gone), None)])
        return gone is not None

    def history(self, lock_name: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return read_history(conn, lock_name, limit)
