"""A won acquire whose reply was lost: the worker frees its own lease and takes it again at once.

Regression: it treated its own holder id as a stranger's and watched the lease
for a whole ttl before taking it over, so nobody ran the job for ttl + check.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.exc import OperationalError

from celery_master.election.elector import Elector, Role
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for


class LosesTheFirstReply(LeaseStore):
    """The real store; the first statement that wins a lease commits, then its reply is lost."""

    lost = 0

    def _lose(self, won: dict[str, int]) -> None:
        if won and not self.lost:
            self.lost += 1
            raise OperationalError("acquire", {}, Exception("server closed the connection"))

    def tick(self, *args: Any, **kwargs: Any) -> Any:
        result = super().tick(*args, **kwargs)
        self._lose(result.taken)
        return result

    def acquire(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        won = super().acquire(*args, **kwargs)
        self._lose(won)
        return won


def test_a_lost_reply_on_a_won_acquire_costs_a_round_not_a_ttl(db_url):
    timing = JobSettings(0.05, 0.2, 1.0, 9)  # ttl 10 s: far above what a round trip takes
    store = LosesTheFirstReply(create_lease_engine(db_url, timeout=timing.heartbeat_interval))
    elector = Elector(store, [(MasterJob("A", lambda ctx: None), timing)], Holder("n"))
    began = time.monotonic()
    elector.start()
    try:
        bound = timing.init_delay + 2 * timing.check_interval + timing.heartbeat_interval + 1.0
        wait_for(lambda: elector.roles()["A"] is Role.MASTER, timing.ttl + 5, "a master of A")
        took = time.monotonic() - began
        assert store.lost == 1, "no reply was lost: the test proves nothing"
        assert took < bound, f"master after {took:.1f}s: the lost reply cost a ttl ({timing.ttl}s)"
        events = [(h["event"], h["epoch"]) for h in store.history("A")]
        assert events[:3] == [("acquired", 2), ("released", 1), ("acquired", 1)], events
    finally:
        elector.stop(timeout=5)
