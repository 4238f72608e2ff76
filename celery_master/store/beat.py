"""Schedule state of the HA beat (last run per entry), written under the fencing epoch.

A reservation is written *before* its task is sent, in one transaction that
first fences the writer's epoch: a stale master cannot write, and so cannot
send; a new master reads what the old one reserved and never sends that slot
again (at most once per slot; a crash between reservation and send loses that
one send, never duplicates it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select

from .history import record
from .leases import BEAT, LeaseStore

__all__ = ["BeatRow", "BeatState"]


@dataclass(frozen=True)
class BeatRow:
    name: str
    last_run_at: float | None
    total_run_count: int
    epoch: int | None


class BeatState:
    """The stored schedule state of one beat lock name."""

    def __init__(self, store: LeaseStore, lock_name: str) -> None:
        self.store = store
        self.lock_name = lock_name

    def load(self) -> dict[str, BeatRow]:
        stmt = select(BEAT).where(BEAT.c.lock_name == self.lock_name)
        with self.store.engine.connect() as conn:
            return {
                r.name: BeatRow(r.name, r.last_run_at, r.total_run_count, r.epoch)
                for r in conn.execute(stmt)
            }

    def reconcile(self, ctx: Any, names: Iterable[str], takeover: str | None = None) -> None:
        """Forget entries removed from the code, add new ones (fenced).

        ``takeover`` (what happened to the slots missed during the gap) is
        recorded in the history as a ``beat-takeover`` event in the same
        transaction, so operators see every takeover of beat with its cost.
        """
        names = list(names)
        with self.store.engine.begin() as conn:
            ctx.fence(conn)
            if takeover is not None:
                event = (self.lock_name, "beat-takeover", ctx.holder, ctx.epoch, takeover[:2000])
                record(conn, self.store.now, [event])
            conn.execute(
                BEAT.delete().where(BEAT.c.lock_name == self.lock_name, BEAT.c.name.not_in(names))
            )
            known = set(
                conn.execute(select(BEAT.c.name).where(BEAT.c.lock_name == self.lock_name))
                .scalars()
                .all()
            )
            missing = [n for n in names if n not in known]
            if missing:
                conn.execute(
                    BEAT.insert(),
                    [
                        {
                            "lock_name": self.lock_name,
                            "name": n,
                            "total_run_count": 0,
                            "epoch": ctx.epoch,
                        }
                        for n in missing
                    ],
                )

    def reserve(self, ctx: Any, name: str, last_run_at: float, total_run_count: int) -> None:
        """Record a send before it happens; raises NotMaster if ``ctx``'s epoch is stale."""
        with self.store.engine.begin() as conn:
            ctx.fence(conn)
            conn.execute(
                BEAT.update()
                .where(and_(BEAT.c.lock_name == self.lock_name, BEAT.c.name == name))
                .values(last_run_at=last_run_at, total_run_count=total_run_count, epoch=ctx.epoch)
            )
