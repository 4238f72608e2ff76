"""The control plane with real workers: remote control, the ``celery master`` CLI, stats."""

from __future__ import annotations

import json
import signal
import time

import pytest

from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cluster import wait_for
from tests.support.handover import (
    HANDOVER,
    HINT_TIMING,
    QUIET,
    RELEASE,
    assert_woken,
    wait_read,
    woken_before,
)

LOCK = "JOB-SCHEDULER"
TIMING = {
    "init_delay": 0.2,
    "check_interval": 30,
    "heartbeat_interval": 1.0,
    "max_heartbeat_retry_count": 15,
}  # check interval 30 s, ttl 16 s: nothing here waits for either
EXPIRES = 3.0  # mastercontrol's default reply timeout: kombu's expires = send time + this


def lease(url: str):
    return LeaseStore(create_lease_engine(url)).read([LOCK])[LOCK]


def by_this_call(out: dict) -> list[str]:
    return [node for node, r in out.items() if r.get("ok", {}).get("by_this_call")]


def replies(result) -> dict:
    """{node: reply} from ``celery control|inspect --json`` output."""
    assert result.returncode == 0, result.stderr
    merged: dict = {}
    for line in result.stdout.splitlines():
        if line.startswith(("{", "[")):
            data = json.loads(line)  # control prints a list of {node: reply}, inspect a dict
            for item in data if isinstance(data, list) else [data]:
                merged.update(item)
    return merged


def roles(cluster) -> list[str]:
    view = replies(cluster.celery("inspect", "--json", "master_status", LOCK))
    return sorted(r["ok"][LOCK]["role"] for r in view.values() if "ok" in r)


def test_disable_stops_the_master_everywhere_across_restarts_until_enable(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **HINT_TIMING)  # a standby reads again QUIET s after a read
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    out = replies(
        cluster.celery("control", "--json", "mastercontrol", "disable", LOCK, "maintenance window")
    )
    assert len(by_this_call(out)) == 1, out
    wait_for(lambda: cluster.master_pid() is None, 10, "the master to stop")
    stop = [e for e in cluster.journal.events("stop", LOCK) if e["pid"] == first]
    assert stop and stop[0]["is_master"] is False
    for w in list(cluster.workers):  # restart every worker
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(30)
    restarted = time.time()
    cluster.start_workers(2)
    wait_for(lambda: roles(cluster) == ["disabled", "disabled"], 30, "both to see it disabled")
    assert not [s for s in cluster.journal.starts(LOCK) if s["t"] > restarted], "a master ran"
    status = json.loads(cluster.celery("master", "status", "--json").stdout)
    assert status[0]["enabled"] is False and status[0]["reason"] == "maintenance window"
    enabled_at = time.time()
    out = replies(cluster.celery("control", "--json", "mastercontrol", "enable", LOCK))
    assert all("ok" in r for r in out.values()), out
    new = cluster.wait_new_start(enabled_at, 2 * QUIET)
    # the restarted workers read the lease at boot: only the command itself can wake them
    assert_woken(cluster, new, restarted, LOCK, RELEASE, "mastercontrol")
    events = [
        h["event"] for h in json.loads(cluster.celery("master", "history", LOCK, "--json").stdout)
    ]
    assert events[:2] == ["acquired", "enabled"] and "disabled" in events


def test_release_hands_over_to_another_worker_which_keeps_it(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, **HINT_TIMING)
    booted = time.time()
    cluster.start_workers(3)
    first = wait_for(cluster.master_pid, 15, "a first master")
    wait_read(cluster, LOCK, cluster.worker(first))
    asked = time.time()
    result = cluster.celery("master", "release", LOCK)
    assert result.returncode == 0 and "release requested from w" in result.stdout
    new = cluster.wait_new_start(asked, 2 * QUIET, exclude_pid=first)
    # the CLI's hint wakes the holder (its next renewal is QUIET s away), its hint a standby
    stepped = f"stops being master of {LOCK!r} (epoch 1): release requested"
    holder_took = woken_before(cluster.worker(first), LOCK, stepped)
    assert 0 <= holder_took < HANDOVER, f"the holder stepped down {holder_took:.3f}s after the hint"
    assert_woken(cluster, new, booted, LOCK)
    row = lease(sqlite_url)
    assert row.epoch == new["epoch"] and row.holder.startswith(cluster.worker(new["pid"]).name)
    assert cluster.master_pid() == new["pid"], "the leaving worker grabbed the lease back"
    cluster.journal.assert_no_overlap(LOCK)
    assert cluster.worker(first).alive()


def test_inspect_master_status_and_stats_show_each_workers_view(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **TIMING)
    cluster.start_workers(2)
    master_pid = wait_for(cluster.master_pid, 15, "a master")
    time.sleep(0.5)
    view = replies(cluster.celery("inspect", "--json", "master_status"))
    roles = sorted(r["ok"][LOCK]["role"] for r in view.values())
    assert roles == ["master", "standby"]
    one = replies(cluster.celery("inspect", "--json", "master_status", LOCK))
    assert len(one) == 2 and all(LOCK in r["ok"] for r in one.values())
    stats = replies(cluster.celery("inspect", "--json", "stats"))
    fields = [s["master"] for s in stats.values()]
    assert all("secret-pw" not in json.dumps(f) for f in fields)
    assert all(f["database"].startswith("postgresql+psycopg2://postgres:***@") for f in fields)
    master_field = next(f for f in fields if f[LOCK]["role"] == "master")
    assert master_field[LOCK]["epoch"] == lease(pg_url).epoch
    node = cluster.worker(master_pid).name
    assert master_field[LOCK]["holder"].startswith(node + "@")


@pytest.mark.parametrize(
    ("words", "error"),
    [
        (["frobnicate", LOCK], "unknown action 'frobnicate'"),
        (["enable", "NO-SUCH-LOCK"], "unknown lock name 'NO-SUCH-LOCK': known are"),
        (["release", "NO-SUCH-LOCK"], "unknown lock name"),
        (["disable", LOCK, "x" * 501], "at most 500"),
        (["disable", " padded"], "leading/trailing spaces"),
        (["disable", LOCK, "line\nbreak"], "printable"),
        (["status", "NO-SUCH-LOCK"], "unknown lock name"),
    ],
)
def test_bad_commands_get_one_clear_error_and_change_nothing(
    make_cluster, sqlite_url, words, error
):
    cluster = make_cluster(sqlite_url, **TIMING)
    cluster.start_workers(1)
    pid = wait_for(cluster.master_pid, 15, "a master")
    before = lease(sqlite_url)
    out = replies(cluster.celery("control", "--json", "mastercontrol", *words))
    (reply,) = out.values()
    assert error in reply["error"]
    after = lease(sqlite_url)  # the reply comes after any SQL the command made
    same = ("holder", "epoch", "enabled", "release_requested", "changed_at", "reason")
    assert [getattr(after, f) for f in same] == [getattr(before, f) for f in same]
    assert cluster.master_pid() == pid and cluster.worker(pid).alive()


def test_a_lock_no_worker_registers_is_recorded_by_the_cli_and_then_steered_by_broadcast(
    make_cluster, sqlite_url
):
    """A broadcast never creates a row (anyone on the broker could fill the table); once the
    CLI, with database access, has recorded the name, a broadcast may steer it, with a warning."""
    cluster = make_cluster(sqlite_url, **TIMING)
    cluster.start_workers(1)
    wait_for(cluster.master_pid, 15, "a master")
    out = replies(cluster.celery("control", "--json", "mastercontrol", "disable", "FUTURE-JOB"))
    (reply,) = out.values()
    assert "unknown lock name 'FUTURE-JOB'" in reply["error"], reply
    assert "celery master disable FUTURE-JOB" in reply["error"]
    assert cluster.celery("master", "enable", "FUTURE-JOB").returncode == 0  # records the row
    out = replies(cluster.celery("control", "--json", "mastercontrol", "disable", "FUTURE-JOB"))
    (reply,) = out.values()
    assert reply["ok"]["enabled"] is False and "persisted" in reply["ok"]["warning"]
    status = json.loads(cluster.celery("master", "status", "FUTURE-JOB", "--json").stdout)
    assert status[0]["enabled"] is False


def test_cli_works_with_no_worker_and_never_shows_the_password(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **TIMING)
    disabled = cluster.celery("master", "disable", LOCK, "--reason", "not yet")
    assert disabled.returncode == 0 and f"{LOCK}: disabled" in disabled.stdout
    status = cluster.celery("master", "status")
    assert status.returncode == 0 and "postgres:***@" in status.stdout
    assert "secret-pw" not in status.stdout + status.stderr + disabled.stderr
    assert "not yet" in status.stdout
    bad = cluster.celery("master", "release", LOCK)
    assert bad.returncode != 0 and "has no master to release" in bad.stderr
    cluster.env["CELERY_MASTER_DATABASE_URL"] = "postgresql+psycopg2://u:hunter2@127.0.0.1:1/x"
    down = cluster.celery("master", "status")
    assert down.returncode != 0 and "unreachable" in down.stderr and "hunter2" not in down.stderr
    cluster.env["CELERY_MASTER_DATABASE_URL"] = "mysql://u:hunter2@h/x"
    wrong = cluster.celery("master", "status")
    assert "does not support" in wrong.stderr and "hunter2" not in wrong.stderr


def test_validate_who_like_reason():
    from celery_master.errors import ConfigurationError
    from celery_master.worker.control import validate_who

    assert validate_who("ops@example (ticket 7)") == "ops@example (ticket 7)"
    assert validate_who(None) is None
    for bad in ("a\nb", "x" * 256, 7):
        with pytest.raises(ConfigurationError, match="who must be printable"):
            validate_who(bad)


def refused_late(worker, action: str) -> bool:
    return f"refused a mastercontrol {action} of {LOCK!r}" in worker.log_text()


def test_one_release_is_one_hand_over_even_when_a_standby_reads_it_late(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, **TIMING)
    cluster.start_workers(3)
    first = wait_for(cluster.master_pid, 15, "a first master")
    late = next(w for w in cluster.workers if w.pid != first)
    asked = cluster.signal(late.pid, signal.SIGSTOP)
    out = replies(cluster.celery("control", "--json", "mastercontrol", "release", LOCK))
    assert len(out) == 2 and by_this_call(out) == [cluster.worker(first).name + "@" + node(out)]
    new = cluster.wait_new_start(asked, 30, exclude_pid=first)
    wait_for(lambda: time.time() > asked + EXPIRES + 0.5, EXPIRES + 5, "the broadcast to expire")
    cluster.signal(late.pid, signal.SIGCONT)  # paused > 3 s: it reads the release now
    wait_for(
        lambda: refused_late(late, "release") or len(cluster.journal.starts(LOCK)) > 2,
        30,
        "the late worker to read the release",
    )
    row = lease(sqlite_url)
    assert not row.release_requested and row.epoch == new["epoch"], "a second release"
    assert [s["pid"] for s in cluster.journal.starts(LOCK) if s["t"] > asked] == [new["pid"]]
    assert cluster.master_pid() == new["pid"]


def node(out: dict) -> str:
    """The host part of the node names in a reply (``w1@host``)."""
    return next(iter(out)).split("@", 1)[1]


def test_a_late_disable_never_undoes_a_later_enable(make_cluster, sqlite_url):
    cluster = make_cluster(sqlite_url, **TIMING)
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a first master")
    late = next(w for w in cluster.workers if w.pid != first)
    sent = cluster.signal(late.pid, signal.SIGSTOP)
    out = replies(cluster.celery("control", "--json", "mastercontrol", "disable", LOCK, "oops"))
    assert len(by_this_call(out)) == 1, out
    wait_for(lambda: cluster.master_pid() is None, 10, "the master to stop")
    enabled_at = time.time()
    assert cluster.celery("master", "enable", LOCK).returncode == 0
    master = cluster.wait_new_start(enabled_at, 30)
    wait_for(lambda: time.time() > sent + EXPIRES + 0.5, EXPIRES + 5, "the broadcast to expire")
    cluster.signal(late.pid, signal.SIGCONT)  # reads the disable after the enable
    wait_for(
        lambda: refused_late(late, "disable") or not lease(sqlite_url).enabled,
        30,
        "the late worker to read the disable",
    )
    assert lease(sqlite_url).enabled, "a late disable undid the later enable"
    assert cluster.master_pid() == master["pid"], "the lock lost its master"


def test_a_storm_of_commands_never_holds_the_main_loop_while_sql_is_pending(sqlite_url):
    """The first command waits (bounded) for the lease database; the others are refused at once."""
    import threading
    from types import SimpleNamespace

    from celery_master.election.elector import Elector
    from celery_master.holder import Holder
    from celery_master.jobs.job import MasterJob
    from celery_master.settings import JobSettings
    from celery_master.worker.broadcast import Broadcasts
    from celery_master.worker.control import SQL_WAIT, mastercontrol
    from celery_master.worker.offload import Offload

    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    elector = Elector(
        store, [(MasterJob(LOCK, lambda ctx: None), JobSettings())], Holder.for_node("t@h")
    )
    offload = Offload(store)
    controller = SimpleNamespace(master_elector=elector, master_offload=offload)
    consumer = SimpleNamespace(steps=[], controller=controller)
    consumer.master_broadcasts = Broadcasts(consumer)
    state = SimpleNamespace(consumer=consumer)
    stuck = threading.Event()
    offload.submit(lambda _store: stuck.wait(30))  # the database hangs: SQL stays pending
    try:
        began = time.monotonic()
        first = mastercontrol(state, "disable", LOCK, "storm")
        assert "outcome not known yet" in first["error"]
        assert time.monotonic() - began < SQL_WAIT + 1
        took = []
        for _ in range(200):
            t = time.monotonic()
            reply = mastercontrol(state, "disable", LOCK, "storm")
            took.append(time.monotonic() - t)
            assert "still waits for the lease database" in reply["error"]
        took.sort()
        assert took[len(took) // 2] < 0.01 and took[-1] < 0.5, f"median {took[len(took) // 2]}"
    finally:
        stuck.set()
    wait_for(lambda: consumer.master_broadcasts.pending.done(), 10, "the pending command")
    assert mastercontrol(state, "enable", LOCK)["ok"]["enabled"] is True
