"""HA beat's fault policies: slots missed in a gap, a broker that stops answering."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from celery_master.errors import ConfigurationError
from celery_master.settings import resolve_beat_misfire
from celery_master.store import LeaseStore, create_lease_engine
from celery_master.store.beat import BeatState
from tests.jobs.beat.support import (
    BEAT_LOCK,
    PERIOD,
    assert_no_duplicate_slot,
    beat_cluster,
    sends,
    takeovers,
)
from tests.support.cluster import wait_for
from tests.support.handover import HOP, STALL
from tests.support.servers import free_port

#: from the beat-takeover row to the catch-up send: the rest of that set-up transaction, the
#: new beat's first broker connection, the slot's fenced reservation and its publish (a round
#: trip each), and a stall
CATCH_UP = 4 * HOP + STALL
#: a catch-up send, even a stalled one, comes before the first slot that ``skip`` sends (a
#: period after the set-up read the clock, which may be a stall before the takeover row)
MISFIRE_PERIOD = CATCH_UP + 2 * STALL


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_slots_missed_in_a_gap_follow_the_misfire_policy(make_cluster, sqlite_url, policy):
    period = MISFIRE_PERIOD
    cluster = beat_cluster(make_cluster, sqlite_url)
    cluster.env["JOURNAL_BEAT_PERIOD"] = str(period)
    cluster.env["CELERY_MASTER_BEAT_MISFIRE"] = json.dumps({"beat-tick": policy})
    (first,) = cluster.start_workers(1)
    wait_for(lambda: len(sends(cluster)) >= 1, 30, "a first send")
    killed = cluster.signal(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    wait_for(lambda: time.time() > killed + 2 * period, 3 * period, "two slots to pass")
    cluster.start_workers(1)
    wait_for(lambda: len(takeovers(sqlite_url)) >= 2, 30, "the second takeover in the history")
    latest = takeovers(sqlite_url)[0]
    assert f"missed, {policy}" in latest["detail"] and latest["detail"].startswith("beat-tick: ")
    missed = int(latest["detail"].split(": ")[1].split(" ")[0])
    assert missed >= 2, latest
    resumed = wait_for(
        lambda: [e for e in sends(cluster) if e["t"] > killed], 3 * period + 5, "sends to resume"
    )
    if policy == "once":  # the missed slots are sent once, at the takeover
        assert resumed[0]["t"] - latest["at"] < CATCH_UP, (resumed[0], latest)
        wait_for(
            lambda: len([e for e in sends(cluster) if e["t"] > killed]) >= 2, period + 10, "sends"
        )
        second = [e for e in sends(cluster) if e["t"] > killed][1]
        assert second["t"] - resumed[0]["t"] > period * 0.9, "more than one catch-up send"
    else:  # nothing sent for the missed slots: the next one is a period after the takeover
        assert resumed[0]["t"] - latest["at"] > CATCH_UP, (resumed[0], latest)
    first_epoch = sends(cluster)[0]["epoch"]
    assert latest["epoch"] == resumed[0]["epoch"] > first_epoch, "sent under the takeover's term"


def test_misfire_setting_is_validated_and_names_the_bad_policy():
    assert resolve_beat_misfire({}, {}) == {}
    assert resolve_beat_misfire({"master_beat_misfire": {"a": "skip"}}, {}) == {"a": "skip"}
    env = {"CELERY_MASTER_BEAT_MISFIRE": '{"b": "once"}'}
    assert resolve_beat_misfire({"master_beat_misfire": {"a": "skip"}}, env) == {"b": "once"}
    with pytest.raises(ConfigurationError, match="unknown misfire policy 'later' for entry 'a'"):
        resolve_beat_misfire({"master_beat_misfire": {"a": "later"}}, {})
    with pytest.raises(ConfigurationError, match="CELERY_MASTER_BEAT_MISFIRE is not JSON"):
        resolve_beat_misfire({}, {"CELERY_MASTER_BEAT_MISFIRE": "{skip"})
    with pytest.raises(ConfigurationError, match="must map beat entry names"):
        resolve_beat_misfire({"master_beat_misfire": ["a"]}, {})


class RedisProcess:
    """A Redis of this test's own, so it can be stopped and started on the same port."""

    def __init__(self, tmp_path) -> None:
        self.port, self.dir, self.proc = free_port(), tmp_path, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        wait_for(
            lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG",
            30,
            "redis to answer",
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def test_a_publish_that_fails_is_retried_until_the_broker_answers(
    make_cluster, sqlite_url, tmp_path
):
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        cluster = beat_cluster(make_cluster, sqlite_url)
        cluster.env["JOURNAL_BROKER_URL"] = redis.url
        cluster.env.pop("JOURNAL_FS_DIR", None)
        (worker,) = cluster.start_workers(1)
        wait_for(lambda: len(sends(cluster)) >= 2, 30, "beat sends")
        redis.stop()
        down = time.time()
        wait_for(  # a slot came due and failed to go out
            lambda: [e for e in cluster.journal.events("send") if e["t"] > down + PERIOD],
            10,
            "a publish attempt while the broker is down",
        )
        redis.start()
        up = time.time()
        wait_for(lambda: len([e for e in sends(cluster) if e["t"] > up]) >= 2, 15, "resumed")
        events = sends(cluster)
        assert_no_duplicate_slot(events)
        reserved = BeatState(LeaseStore(create_lease_engine(sqlite_url)), BEAT_LOCK).load()
        published = {e["id"] for e in events}
        attempted = {e["id"] for e in cluster.journal.events("send")}
        assert attempted <= published | {events[-1]["id"]}, "a reserved slot was never sent"
        assert reserved["beat-tick"].total_run_count in (len(published), len(published) + 1)
        assert all(e["epoch"] == events[0]["epoch"] for e in events)
        assert worker.alive()
        assert "broker answers again" in worker.log_text()
    finally:
        redis.stop()
