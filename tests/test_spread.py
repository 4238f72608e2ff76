"""Spreading lock names over live workers: the rules, then real workers."""

from __future__ import annotations

import math
import signal
import time
from collections import Counter

import pytest

from celery_master.errors import ConfigurationError
from celery_master.job import MasterJob
from celery_master.spread import Held, Spread
from celery_master.store.leases import Member
from tests.support.cluster import FAST_TIMING, wait_for


def spread(node="a@h", total=12, members=()):
    s = Spread(f"{node}:1:x", node, total, grace=2.0)
    s.update([Member(f"{n}:1:x", n, held) for n, held in members])
    return s


def test_quota_is_total_weight_over_live_workers_rounded_up():
    assert spread(members=[("a@h", 0)]).quota == 12
    assert spread(members=[("a@h", 0), ("b@h", 0), ("c@h", 0), ("d@h", 0), ("e@h", 0)]).quota == 3


def test_a_worker_under_quota_takes_at_once_one_at_quota_only_after_the_grace():
    s = spread(members=[("a@h", 3), ("b@h", 0), ("c@h", 0), ("d@h", 0)])
    assert s.admit(1, None, held_weight=2, takeable_for=0.0)
    assert not s.admit(1, None, held_weight=3, takeable_for=0.0)
    assert s.admit(1, None, held_weight=3, takeable_for=2.0), "availability before spread"


def test_surplus_is_yielded_only_to_workers_under_quota():
    held = [Held(f"L{i}", 1, None) for i in range(12)]
    alone = spread(members=[("a@h", 12)])
    assert alone.surplus(held) == []
    four = spread(members=[("a@h", 12), ("b@h", 0), ("c@h", 0), ("d@h", 0)])
    assert len(four.surplus(held)) == 9
    full = spread(total=13, members=[("a@h", 5), ("b@h", 4), ("c@h", 4)])
    assert full.surplus(held[:5]) == [], "nobody is under quota: no flapping"


def test_prefer_defers_to_a_matching_live_worker():
    s = spread(node="a@h", members=[("a@h", 0), ("beat@h", 0)])
    assert not s.admit(1, "beat@*", held_weight=0, takeable_for=0.0)
    assert s.surplus([Held("B", 1, "beat@*")]) == ["B"]
    lone = spread(node="a@h", members=[("a@h", 0)])
    assert lone.admit(1, "beat@*", held_weight=0, takeable_for=0.0), "no matching worker alive"


def test_weight_and_prefer_options_are_validated():
    start = lambda ctx: None  # noqa: E731
    MasterJob("A", start, options={"weight": 3, "prefer": "w1@*"})
    with pytest.raises(ConfigurationError, match="weight=0"):
        MasterJob("A", start, options={"weight": 0})
    with pytest.raises(ConfigurationError, match="node-name glob"):
        MasterJob("A", start, options={"prefer": " "})


LOCKS = [f"L{i:02d}" for i in range(12)]
TIMING = FAST_TIMING


def holders(cluster) -> Counter:
    return Counter(cluster.master_pid(n) for n in LOCKS)


def test_twelve_locks_spread_over_four_workers_and_a_leaver_hands_its_share_over(
    make_cluster, pg_url
):
    cluster = make_cluster(pg_url, locks=",".join(LOCKS), **TIMING)
    cluster.start_workers(4)
    bound = math.ceil(len(LOCKS) / 4) + 1

    def spread_out():
        count = holders(cluster)
        return None not in count and len(count) == 4 and max(count.values()) <= bound

    wait_for(spread_out, 60, "12 locks spread over 4 workers, at most 4 each", 0.2)
    time.sleep(cluster.ttl * 2)
    assert spread_out(), f"the spread did not hold: {holders(cluster)}"
    leaver = holders(cluster).most_common(1)[0][0]
    at = cluster.signal(leaver, signal.SIGTERM)

    def handed_over():
        count = holders(cluster)
        return None not in count and leaver not in count and max(count.values()) <= bound

    wait_for(handed_over, 60, "the leaver's share taken by the other three", 0.2)
    for name in LOCKS:
        cluster.journal.assert_no_overlap(name)
    moved = [s for s in cluster.journal.starts() if s["t"] > at]
    assert len(moved) <= 6, f"too many moves for one leaver: {len(moved)}"
