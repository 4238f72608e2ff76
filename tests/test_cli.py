"""``celery master ...`` as an operator runs it: real workers, real PostgreSQL, exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import sqlalchemy as sa

from celery_master.store import LeaseStore, create_lease_engine
from tests.support.cli import run_master
from tests.support.cluster import FAST_TIMING, ROOT, wait_for
from tests.support.handover import HINT_TIMING, QUIET, RELEASE, assert_woken, wait_read

LOCK = "JOB-SCHEDULER"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STALL = 1.0  # room for a stalled process on a shared machine


def check(cluster, *names: str) -> subprocess.CompletedProcess[str]:
    return cluster.celery("master", "status", "--check", *names)


def exits(
    done: subprocess.CompletedProcess[str], code: int
) -> subprocess.CompletedProcess[str] | None:
    return done if done.returncode == code else None


def tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return [t for t in sa.inspect(engine).get_table_names() if t.startswith("celery_master")]
    finally:
        engine.dispose()


def test_check_exits_0_ok_1_disabled_2_no_live_master_3_database_unreadable(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    cluster.start_workers(2)
    wait_for(cluster.master_pid, 15, "a master")
    ok = check(cluster)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK")

    assert cluster.celery("master", "disable", LOCK, "--reason", "maintenance").returncode == 0
    disabled = check(cluster)
    assert disabled.returncode == 1, disabled.stdout + disabled.stderr
    lines = disabled.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"WARNING {LOCK}: disabled by "), lines
    assert lines[0].endswith(": maintenance"), lines

    assert cluster.celery("master", "enable", LOCK).returncode == 0
    wait_for(lambda: check(cluster).returncode == 0, 15, "a master again")
    killed_at = time.monotonic()
    for w in cluster.workers:
        w.proc.send_signal(signal.SIGKILL)
    # a dead master's lease stays live for up to a ttl (database time); then it is expired
    bound = cluster.ttl + STALL + 2
    gone = wait_for(lambda: exits(check(cluster), 2), bound, "--check to exit 2")
    assert time.monotonic() - killed_at >= cluster.ttl - cluster.setting("heartbeat_interval", 1)
    assert gone.stdout.startswith(f"CRITICAL {LOCK}: lease of ") and "expired" in gone.stdout
    assert len(gone.stdout.splitlines()) == 1

    cluster.env["CELERY_MASTER_DATABASE_URL"] = re.sub(r":\d+/", ":1/", pg_url)
    unreadable = check(cluster)
    assert unreadable.returncode == 3, unreadable.stdout + unreadable.stderr
    assert unreadable.stdout.startswith("UNKNOWN lease database ")
    assert "secret-pw" not in unreadable.stdout and "Traceback" not in unreadable.stderr


def test_check_names_a_master_whose_job_stopped_reporting_progress(tmp_path, pg_url):
    within = 1.0
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(
        PYTHONPATH=str(ROOT),
        CELERY_MASTER_DATABASE_URL=pg_url,
        PROGRESS_FS_DIR=str(tmp_path / "broker"),
        PROGRESS_WITHIN=str(within),
        PROGRESS_STALL_FILE=str(tmp_path / "stall"),
        **{f"CELERY_MASTER_{k.upper()}": str(v) for k, v in FAST_TIMING.items()},
    )
    celery = [sys.executable, "-m", "celery", "-A", "tests.apps.progress_app"]
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [*celery, "worker", "-P", "solo", "-n", "p1@%h", "--without-mingle", "--without-gossip"],
        cwd=tmp_path,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*celery, "master", *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    try:
        wait_for(lambda: run("status", "--check").returncode == 0, 30, "a progressing master")
        row = json.loads(run("status", "-j").stdout)[0]
        assert row["progress_within"] == within and row["progress_age"] is not None
        (tmp_path / "stall").touch()
        stalled_at = time.monotonic()
        # the last report reaches the row with the next renewal, then is `within` old
        bound = within + FAST_TIMING["heartbeat_interval"] + STALL + 2
        found = wait_for(
            lambda: exits(run("status", "--check"), 2), bound, "--check to see the stall", 0.2
        )
        assert time.monotonic() - stalled_at >= within
        assert "last reported progress" in found.stdout, found.stdout
        assert worker.poll() is None, "the election never makes a worker unhealthy"
        status = run("status")
        assert "PROGRESS" in status.stdout and "s ago (due 1s)" in status.stdout, status.stdout
    finally:
        worker.kill()
        worker.wait(10)


def test_release_wait_prints_the_new_holder_within_the_graceful_bound(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **HINT_TIMING)  # neither worker reads again for QUIET s
    booted = time.time()
    cluster.start_workers(2)
    first = wait_for(cluster.master_pid, 15, "a master")
    wait_read(cluster, LOCK, cluster.worker(first))
    asked = time.time()
    done = cluster.celery(
        "master", "release", LOCK, "--wait", "--timeout", str(2 * QUIET), timeout=3 * QUIET
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = done.stdout.strip().splitlines()[-1]
    took = float(re.search(r"after ([\d.]+)s$", line).group(1))
    new = cluster.wait_new_start(asked, 5, exclude_pid=first)
    node = cluster.worker(new["pid"]).name
    assert line.startswith(f"{LOCK}: {node}@") and "(epoch 2)" in line, line
    # L2 twice: the CLI's hint wakes the holder, which stops and frees it; its hint wakes
    # the standby: the holder's next renewal and the standby's next read are QUIET s away
    assert took < RELEASE, line
    assert_woken(cluster, new, booted, LOCK)


def test_release_wait_says_at_once_when_no_other_worker_runs_the_lock(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    cluster.start_workers(1)
    master = wait_for(cluster.master_pid, 15, "a master")
    started = time.monotonic()
    done = cluster.celery("master", "release", LOCK, "--wait", "--timeout", "60")
    assert done.returncode != 0 and time.monotonic() - started < 30
    assert "no other live worker runs" in done.stderr, done.stderr
    assert cluster.master_pid() == master, "nothing was released"


def test_disable_wait_returns_once_no_worker_runs_the_job(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    cluster.start_workers(2)
    master = wait_for(cluster.master_pid, 15, "a master")
    done = cluster.celery("master", "disable", LOCK, "--wait", "--timeout", "20")
    returned = time.time()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no worker runs it" in done.stdout
    stop = [e for e in cluster.journal.events("stop", LOCK) if e["pid"] == master]
    assert stop and stop[0]["t"] <= returned


def test_forget_is_refused_while_a_worker_runs_the_lock_then_removes_the_row(make_cluster, pg_url):
    cluster = make_cluster(pg_url, locks="JOB-SCHEDULER,OLD-JOB", **FAST_TIMING)
    cluster.start_workers(1)
    wait_for(lambda: cluster.master_pid("OLD-JOB"), 15, "a master of OLD-JOB")
    refused = cluster.celery("master", "forget", "OLD-JOB")
    assert refused.returncode != 0 and "held by" in refused.stderr, refused.stderr
    cluster.workers[0].proc.send_signal(signal.SIGTERM)  # a graceful leave frees its membership
    cluster.workers[0].proc.wait(30)
    cluster.env["JOURNAL_LOCKS"] = "JOB-SCHEDULER"  # the job was removed from the code
    cluster.start_workers(1)
    wait_for(cluster.master_pid, 15, "a master of the remaining job")
    done = cluster.celery("master", "forget", "OLD-JOB")
    assert done.returncode == 0, done.stdout + done.stderr
    names = [r["lock_name"] for r in json.loads(cluster.celery("master", "status", "-j").stdout)]
    assert names == [LOCK]
    assert cluster.celery("master", "status", "--check", "--all").returncode == 0


def test_read_only_commands_never_create_tables_and_say_so(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    for args in (("status",), ("history", LOCK)):
        done = cluster.celery("master", *args)
        assert done.returncode == 1 and "do not exist yet" in done.stderr, done.stderr
    assert check(cluster).returncode == 2
    assert tables(pg_url) == []


def test_status_json_uses_iso_times_and_unknown_names_list_the_known_ones(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    cluster.start_workers(1)
    wait_for(cluster.master_pid, 15, "a master")
    rows = json.loads(cluster.celery("master", "status", "-j").stdout)
    assert ISO.match(rows[0]["since"]), rows[0]
    unknown = cluster.celery("master", "status", "NOPE")
    assert unknown.returncode == 1 and f"known are {LOCK}" in unknown.stderr, unknown.stderr
    history = json.loads(cluster.celery("master", "history", LOCK, "-j").stdout)
    assert history and all(ISO.match(h["at"]) for h in history)


def test_status_marks_a_lock_name_registered_by_two_apps(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    cluster.start_worker("w1")
    cluster.env["CELERY_MASTER_APP_NAME"] = "billing"  # another app on the same database
    cluster.start_worker("w2")
    wait_for(cluster.master_pid, 15, "a master")

    def both_apps() -> list[str] | None:
        rows = json.loads(cluster.celery("master", "status", "-j").stdout)
        return rows[0]["apps"] if len(rows[0]["apps"]) == 2 else None

    assert wait_for(both_apps, 15, "membership of both apps", 0.2) == ["billing", "journal_app"]
    shown = cluster.celery("master", "status")
    assert f"warning: {LOCK!r} is registered by several apps (billing, journal_app)" in (
        shown.stderr
    ), shown.stderr


def test_check_covers_the_ha_beat_lock_of_the_app(make_cluster, pg_url):
    cluster = make_cluster(pg_url, **FAST_TIMING)
    cluster.env["CELERY_MASTER_BEAT"] = "1"  # read by the workers and by the CLI alike
    cluster.start_workers(1)
    wait_for(lambda: exits(check(cluster), 0), 20, "a master of both lock names", 0.2)
    assert check(cluster).stdout.startswith("OK: 2 lock name(s)")
    disabled = cluster.celery("master", "disable", "celery-beat:journal_app")
    assert disabled.returncode == 0, disabled.stderr
    assert check(cluster).stdout.startswith("WARNING celery-beat:journal_app: disabled")


def test_stored_text_is_printed_escaped_so_it_cannot_forge_lines_or_drive_the_terminal(
    sqlite_url,
):
    """Reasons, who, holders and history details are written by others: a newline or an ANSI
    escape in them must not add a line to ``status --check`` nor reach the terminal raw."""
    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    evil = "OTHER\x1b[2J"
    store.ensure_rows([LOCK, evil])
    store.set_enabled(LOCK, False, "ops\x1b]0;owned\x07", "maintenance\nCRITICAL fake")
    store.acquire("node\u202e\n1:42:abc", [evil], {}, {evil: 3600.0})
    outputs = {
        "check": run_master(sqlite_url, "status", "--check", "--all"),
        "status": run_master(sqlite_url, "status"),
        "history": run_master(sqlite_url, "history", LOCK),
        "an error naming the known": run_master(sqlite_url, "forget", "NOPE"),
    }
    for what, done in outputs.items():
        assert "\x1b" not in done.output and "\u202e" not in done.output, (what, done.output)
        assert "\x07" not in done.output, (what, done.output)
    check = outputs["check"].output.splitlines()
    assert len(check) == 1 and check[0].startswith(f"WARNING {LOCK}: disabled by ops"), check
    assert check[0].endswith(": maintenance\\nCRITICAL fake"), check
    assert "OTHER\\x1b[2J" in outputs["status"].output and "node\\u202e\\n1" in (
        outputs["status"].output
    )
    assert "maintenance\\nCRITICAL fake" in outputs["history"].output
    assert "known are JOB-SCHEDULER, OTHER\\x1b[2J" in outputs["an error naming the known"].output


def test_an_unreadable_schema_version_is_one_line_and_a_failing_exit(sqlite_url):
    store = LeaseStore(create_lease_engine(sqlite_url))
    store.ensure_schema()
    store.ensure_rows([LOCK])
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE celery_master_meta SET value = '3a'"))
    for args, code in (
        (("enable", LOCK), 1),
        (("status",), 1),
        (("history", LOCK), 1),
        (("status", "--check", LOCK), 3),
    ):
        done = run_master(sqlite_url, *args)
        lines = done.output.splitlines()
        assert done.code == code and len(lines) == 1, (args, done.code, done.output)
        assert "schema_version '3a'" in lines[0], (args, lines)
