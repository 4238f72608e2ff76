"""The short chaos soak (about a minute): safe, available, quiet, and recovered at the end.

Safety: never two masters, never a stale fenced write (judged in commit order).
Availability: outside the failover windows of the faults, no lock is
masterless longer than a spread move may take (grace + one check) plus a tick
and a 1 s stall. Quiet: no ERROR/CRITICAL line in any worker log beyond
bench/chaosreport.py's allow-list, and no traceback.
Recovered: every recovery action worked and every lock has a master once the
faults stop, so a run whose database never comes back fails.
Shown to have happened: every fault kind asked for ran, or the report names
why it cannot here; stale fenced writes were attempted (and refused), so "0
accepted" means something; a stepped wall clock was seen to move, in the
worker's own journal and on the database server.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TICK = 0.2  # the soak's journal job ticks this often
STALL = 1.0  # room for one scheduling stall of a loaded machine


def longest_allowed_gap(report) -> float:
    """A spread move may leave a lock masterless for the grace (2 x check interval) plus
    one check before any candidate takes it (DESIGN.md): that, a tick and a stall."""
    check = report["check_interval"]
    return 2 * check + check + TICK + STALL


def load_chaos():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "bench" / "chaos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_faults_happened(report) -> None:
    """Each fault the soak claims left evidence; a kind it cannot inject is named, not dropped."""
    assert report["never_ran"] == [], f"fault kinds that never ran: {report['never_ran']}"
    refused = report["stale_writes_refused"]
    assert refused["database"] + refused["locally"] > 0, (
        f"no stale fenced write was attempted, so '0 accepted' shows nothing: {refused}"
    )
    assert report["stale_writes_passed"] == 0, "a job's write passed the fence after its term"
    for where, clock in report["clock_steps"].items():
        if clock["injected"]:
            assert clock["moved"], f"the {where}'s wall clock never moved: {clock}"


def assert_healthy(report) -> None:
    assert report["recovery_failures"] == []
    assert report["unrecovered"] == [], "locks without a master after the faults stopped"
    assert report["overlaps"] == 0
    assert report["stale_fenced_writes_accepted"] == 0, report["stale_judged_by"]
    assert report["fenced_writes"] > 100, "the fenced path was exercised"
    assert report["worker_crashes"] == []
    assert report["lost_control_commands"] == 0
    assert report["error_lines"] == [], "ERROR lines a fault does not explain"
    assert report["tracebacks"] == [], "a thread died (its traceback is logged at WARNING)"
    bound = longest_allowed_gap(report)
    for lock, a in report["availability"].items():
        assert a["bins"] >= 10, f"{lock}: too few bins outside fault windows to judge"
        assert a["longest_gap"] <= bound, (
            f"{lock} had no master for {a['longest_gap']} s at {a['longest_gap_at']} s "
            f"(bins without a master at {a['missing_at']} s), outside every fault window"
        )


def test_short_soak_is_safe_available_and_recovers():
    """Classic faults plus database blips and +-1 h wall-clock steps on a worker and on
    PostgreSQL (libfaketime): no clock decides anything, so a step costs nothing."""
    faults = "classic,db_blip,clock_worker,clock_db"
    args = ["--duration", "65", "--fast", "--seed", "11", "--every", "3", "--faults", faults]
    report = load_chaos().main(args)
    assert sum(report["faults"].values()) >= 5, report["faults"]
    # the filesystem broker has no server to stop: the report says so rather than drop it
    assert set(report["not_applicable"]) == {"broker_stop"}, report["not_applicable"]
    assert report["faults"].get("clock_worker") and report["faults"].get("clock_db")
    assert_faults_happened(report)
    assert_healthy(report)


def test_heterogeneous_soak_keeps_every_lock_and_each_apps_beat():
    """Two apps on one PostgreSQL, HA beat on a subset of each app's workers, unequal
    weights, a lock only one worker runs, a `prefer` glob naming a node that does not run
    its lock; every fault kind, late broadcasts among them. Same assertions, and each app's
    beat sends every slot outside the fault windows, none twice."""
    # every kind once, then a quiet spell: with a fault every 3 s the windows of twelve kinds
    # left some lock fewer than 10 bins to judge (1 run in 4 on a loaded machine)
    args = ["--hetero", "--duration", "65", "--fast", "--seed", "3", "--every", "3", "--each-once"]
    report = load_chaos().main([*args, "--faults", "all"])
    assert sum(report["faults"].values()) >= 5, report["faults"]
    assert set(report["not_applicable"]) == {"broker_stop"}, report["not_applicable"]
    assert_faults_happened(report)
    assert_healthy(report)
    late = report["late_broadcasts"]
    assert late["n"] >= 1 and late["clean"] == late["n"], f"late broadcasts not measured: {late}"
    assert all(n == 1 for n in late["releases_applied"]), f"a release applied twice: {late}"
    assert late["undone_enables"] == 0, f"a late disable undid a later enable: {late}"
    assert len(report["beat"]) == 2, "both apps run a beat"
    for app, beat in report["beat"].items():
        sent = beat["sends"] + beat["left_out_sends"]  # a stepped clock's sends are left out
        assert sent > 10, f"{app}'s beat sent almost nothing"
        assert beat["duplicates"] == 0, f"{app} sent a slot twice: {beat['duplicate_slots']}"
        assert beat["lost"] == 0, f"{app} lost slots at {beat['lost_at']} s"
