"""Spreading lock names over the workers that run them: the rules, then real workers."""

from __future__ import annotations

import math
import signal
import time
from collections import Counter

import pytest

from celery_master.election.spread import Held, Spread
from celery_master.errors import ConfigurationError
from celery_master.jobs.job import MasterJob
from celery_master.store.rows import Member
from tests.support.cluster import FAST_TIMING, wait_for


def member(node: str, held: int, locks: dict[str, int], app: str = "a") -> Member:
    return Member(f"{node}:1:x", node, held, app, locks)


def spread(node: str, locks: dict[str, int], others: list[Member], app: str = "a") -> Spread:
    s = Spread(f"{node}:1:x", node, app, locks)
    s.update(others)
    return s


TWELVE = {f"L{i:02d}": 1 for i in range(12)}


def held(names, weights=None, prefer=None) -> list[Held]:
    return [Held(n, (weights or {}).get(n, 1), (prefer or {}).get(n)) for n in names]


def test_a_heavy_worker_hands_the_surplus_to_lighter_candidates_in_one_look():
    others = [member(n, 0, TWELVE) for n in ("b@h", "c@h", "d@h")]
    moves = spread("a@h", TWELVE, others).moves(held(TWELVE))
    assert len(moves) == 9
    assert Counter(m.to_node for m in moves) == {"b@h": 3, "c@h": 3, "d@h": 3}


def test_a_joining_worker_gets_a_share_even_when_everyone_is_at_the_fair_share():
    """16 lock names on 4 workers, a fifth joins: ceil(16/5) = 4 is everyone's load."""
    mine = list(TWELVE) + ["X1", "X2", "X3", "X4"]
    locks = dict.fromkeys(mine, 1)
    others = [member(n, 4, locks) for n in ("b@h", "c@h", "d@h")] + [member("e@h", 0, locks)]
    moves = spread("a@h", locks, others).moves(held(mine[:4]))
    assert [m.to_node for m in moves] == ["e@h"], "one move per look toward the newcomer"


def test_no_move_once_loads_differ_by_less_than_two_weights():
    others = [member("b@h", 4, TWELVE), member("c@h", 4, TWELVE)]
    assert spread("a@h", TWELVE, others).moves(held(list(TWELVE)[:4])) == []
    others = [member("b@h", 4, TWELVE), member("c@h", 3, TWELVE)]
    assert spread("a@h", TWELVE, others).moves(held(list(TWELVE)[:4])) == []
    moves = spread("a@h", TWELVE, others).moves(held(list(TWELVE)[:5]))  # 5 vs 3: shrinks to 4/4
    assert [m.to_node for m in moves] == ["c@h"]


def test_a_lock_never_moves_to_a_worker_that_does_not_run_it():
    """Two apps on one database: B's workers are lighter, but they do not run A1."""
    mine = {"A1": 1, "celery-beat:A": 1}
    others = [member("b1@h", 0, {"B1": 1}, app="B"), member("b2@h", 1, {"B1": 1}, app="B")]
    s = spread("a@h", mine, others, app="A")
    assert s.moves(held(mine)) == []
    assert s.candidates("A1") == []


def test_per_lock_candidates_even_out_a_subset():
    """Beat runs on two workers of four: it may move only between those two."""
    locks = {"L1": 1, "L2": 1, "beat": 1}
    others = [
        member("w2@h", 0, {"L1": 1, "L2": 1, "beat": 1}),
        member("w3@h", 0, {"L1": 1, "L2": 1}),
        member("w4@h", 0, {"L1": 1, "L2": 1}),
    ]
    moves = spread("w1@h", locks, others).moves(held(locks))
    beat = [m for m in moves if m.lock_name == "beat"]
    assert all(m.to_node == "w2@h" for m in beat)
    assert len(moves) == 2  # 3 held over 4 workers: keep one, hand two over


def test_unequal_weights_move_only_when_the_difference_shrinks():
    locks = {"BIG": 3, "S1": 1}
    others = [member("b@h", 1, locks)]
    # a holds 4 (BIG + S1), b holds 1: moving S1 gives 3 vs 2 (shrinks); BIG would give 1 vs 4
    moves = spread("a@h", locks, others).moves(held(locks, weights=locks))
    assert [m.lock_name for m in moves] == ["S1"]


def test_prefer_hands_over_only_to_a_matching_worker_that_runs_the_lock():
    locks = {"GPU": 1}
    runs = [member("gpu1@h", 0, locks)]
    assert [
        m.to_node for m in spread("a@h", locks, runs).moves(held(locks, prefer={"GPU": "gpu*"}))
    ] == ["gpu1@h"]
    assert spread("a@h", locks, runs).deferred("GPU", "gpu*")
    does_not_run = [member("gpu1@h", 0, {"OTHER": 1})]
    s = spread("a@h", locks, does_not_run)
    assert s.moves(held(locks, prefer={"GPU": "gpu*"})) == []
    assert not s.deferred("GPU", "gpu*"), "a matching node that does not run GPU is no candidate"


def test_a_lock_name_registered_by_two_apps_warns_once(caplog):
    s = Spread("a@h:1:x", "a@h", "A", {"SHARED": 1})
    for _ in range(3):
        s.update([member("b@h", 0, {"SHARED": 1}, app="B")])
    warnings = [r for r in caplog.records if "registered by app 'B'" in r.getMessage()]
    assert len(warnings) == 1


def test_weight_and_prefer_options_are_validated():
    start = lambda ctx: None  # noqa: E731
    MasterJob("A", start, options={"weight": 3, "prefer": "w1@*"})
    with pytest.raises(ConfigurationError, match="weight=0"):
        MasterJob("A", start, options={"weight": 0})
    with pytest.raises(ConfigurationError, match="node-name glob"):
        MasterJob("A", start, options={"prefer": " "})


LOCKS = [f"L{i:02d}" for i in range(12)]
TIMING = FAST_TIMING


def holders(cluster, names=LOCKS) -> Counter:
    return Counter(cluster.master_pid(n) for n in names)


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
    settled = time.time()
    # once settled, every lock keeps a master: moves stop and none is in flight for long
    end = time.monotonic() + 2 * cluster.ttl
    while time.monotonic() < end:
        count = holders(cluster)
        assert max(count.values()) <= bound, f"the spread did not hold: {count}"
        time.sleep(0.2)
    wait_for(spread_out, cluster.ttl, "every lock with a master after the settling window")
    for name in LOCKS:
        cluster.journal.assert_no_overlap(name)
    leaver = holders(cluster).most_common(1)[0][0]
    at = cluster.signal(leaver, signal.SIGTERM)

    def handed_over():
        count = holders(cluster)
        return None not in count and leaver not in count and max(count.values()) <= bound

    wait_for(handed_over, 60, "the leaver's share taken by the other three", 0.2)
    for name in LOCKS:
        cluster.journal.assert_no_overlap(name)
    moved = [s for s in cluster.journal.starts() if s["t"] > at]
    assert len(moved) < len(LOCKS), f"a leaver made {len(moved)} moves"
    assert settled < at
