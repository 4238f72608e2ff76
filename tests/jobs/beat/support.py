"""What the HA beat tests share: a beat cluster, the sends the broker accepted, their checks."""

from __future__ import annotations

import time

from celery_master.jobs.job import MasterContext
from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import FAST_TIMING

TIMING = FAST_TIMING
PERIOD = 1.0
BEAT_LOCK = "celery-beat"


def beat_cluster(make_cluster, url: str, **settings: float):
    cluster = make_cluster(url, locks="", **{**TIMING, **settings})
    cluster.env["CELERY_MASTER_BEAT"] = "1"
    cluster.env["CELERY_MASTER_BEAT_LOCK_NAME"] = BEAT_LOCK
    return cluster


def sends(cluster) -> list[dict]:
    """Slots the broker accepted, one per task id (a retried publish keeps its id)."""
    seen: dict[str, dict] = {}
    for e in sorted(cluster.journal.events("published"), key=lambda e: e["t"]):
        seen.setdefault(e["id"], e)
    return sorted(seen.values(), key=lambda e: e["t"])


def assert_no_duplicate_slot(events: list[dict], period: float = PERIOD) -> None:
    for a, b in zip(events, events[1:], strict=False):
        assert b["t"] - a["t"] > period / 2, f"one slot sent twice: {a} and {b}"


def assert_one_sender_at_a_time(events: list[dict]) -> None:
    order = [e["pid"] for e in events]
    runs = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
    assert len(runs) == len(set(runs)), f"senders interleave: {runs}"


def assert_epochs_grow_with_senders(events: list[dict]) -> None:
    """Each sender stamps its own term's epoch; a later sender has a newer one."""
    epochs = [e["epoch"] for e in events]
    assert all(isinstance(x, int) for x in epochs), f"a send without the epoch header: {events}"
    assert epochs == sorted(epochs), f"epochs go back: {epochs}"
    by_pid = {e["pid"]: e["epoch"] for e in events}
    assert len(set(by_pid.values())) == len(by_pid), f"two senders shared an epoch: {by_pid}"


def takeovers(url: str) -> list[dict]:
    return [
        h
        for h in LeaseStore(create_lease_engine(url)).history(BEAT_LOCK)
        if h["event"] == "beat-takeover"
    ]


def elected(url: str, holder: str = "h@x") -> tuple[LeaseStore, MasterContext]:
    """A term won through the real acquire statement, with the real ttl as its deadline."""
    store = LeaseStore(create_lease_engine(url))
    store.ensure_schema()
    store.ensure_rows([BEAT_LOCK])
    ttl = TIMING["heartbeat_interval"] * TIMING["max_heartbeat_retry_count"]
    sent = time.monotonic()
    (epoch,) = store.acquire(holder, [BEAT_LOCK], {}, {BEAT_LOCK: ttl}).values()
    ctx = MasterContext(
        BEAT_LOCK,
        epoch,
        holder,
        sent + ttl,
        fence=lambda conn, c: store.fence(conn, c.lock_name, c.epoch, c.holder, 1000),
    )
    return store, ctx
