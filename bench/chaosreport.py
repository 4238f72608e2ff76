"""What the chaos soak counts: overlaps, stale fenced writes, availability, beat slots, errors.

Every count reads evidence the workers left (their journals, their logs, rows
in the lease database), never the soak's own bookkeeping of what should have
happened. Instants are journal instants: CLOCK_MONOTONIC on one base for every
process (JOURNAL_CLOCK_BASE), so a worker whose wall clock was stepped still
journals on the host's one timeline.

Stale fenced writes are judged in *commit order* on PostgreSQL: deferred
constraint triggers draw a number from one sequence while each fenced write
and each acquisition commits. A fenced write is stale when an acquisition of a
newer epoch of its lock committed before it: exactly the write the fence must
refuse (fenced before a takeover, committed after it). A timestamp taken before
the commit would never see that case. SQLite (one writer) is judged by the
write's timestamp against the acquisition's, and says so.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from bench.chaosevidence import print_evidence

__all__ = [
    "ALLOWED_ERRORS",
    "Window",
    "availability",
    "beat_slots",
    "error_lines",
    "install_commit_order",
    "overlaps",
    "percentiles",
    "print_report",
    "stale_fenced_writes",
]

Window = tuple[float, float]  # [start, end) on the journal timeline

#: ERROR/CRITICAL lines a fault is expected to cause, each with the reason it is fine
ALLOWED_ERRORS: dict[str, str] = {
    r"consumer: Cannot connect to redis": "Celery's own consumer during a broker_stop fault",
    r"consumer: Connection to broker lost": "Celery's own consumer during a broker_stop fault",
    r"start\(\) of '(?!celery-beat)[^']+' still runs": (
        "the journal job's own fenced write waits up to a heartbeat for the fence (db_slow, "
        "db_blip) before it sees ctx.stopping; the product logs that overrun loudly, by design"
    ),
}

COMMIT_ORDER_DDL = [
    "CREATE TABLE IF NOT EXISTS journal_fenced_tick (lock_name VARCHAR(200), "
    "epoch BIGINT, holder VARCHAR(255), at FLOAT)",
    "CREATE SEQUENCE IF NOT EXISTS journal_commit_seq",
    "CREATE TABLE IF NOT EXISTS journal_commit_order "
    "(kind TEXT, lock_name TEXT, epoch BIGINT, seq BIGINT)",
    """CREATE OR REPLACE FUNCTION journal_fenced_committed() RETURNS trigger
       LANGUAGE plpgsql AS $$ BEGIN
         INSERT INTO journal_commit_order
           VALUES ('fenced', NEW.lock_name, NEW.epoch, nextval('journal_commit_seq'));
         RETURN NULL; END $$""",
    """CREATE OR REPLACE FUNCTION journal_acquired_committed() RETURNS trigger
       LANGUAGE plpgsql AS $$ BEGIN
         INSERT INTO journal_commit_order
           VALUES ('acquired', NEW.lock_name, NEW.epoch, nextval('journal_commit_seq'));
         RETURN NULL; END $$""",
    "DROP TRIGGER IF EXISTS journal_fenced_order ON journal_fenced_tick",
    """CREATE CONSTRAINT TRIGGER journal_fenced_order AFTER INSERT ON journal_fenced_tick
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION journal_fenced_committed()""",
    "DROP TRIGGER IF EXISTS journal_acquired_order ON celery_master_lease",
    """CREATE CONSTRAINT TRIGGER journal_acquired_order AFTER UPDATE ON celery_master_lease
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
       WHEN (NEW.epoch IS DISTINCT FROM OLD.epoch)
       EXECUTE FUNCTION journal_acquired_committed()""",
]


def install_commit_order(url: str) -> None:
    """Create the lease tables (as a worker would) and the commit-order triggers."""
    from celery_master.store.leases import LeaseStore

    engine = sa.create_engine(url)
    try:
        LeaseStore(engine).ensure_schema()
        with engine.begin() as conn:
            for statement in COMMIT_ORDER_DDL:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def stale_fenced_writes(url: str) -> tuple[int, int, str]:
    """(stale writes, fenced writes, how judged)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            total = int(conn.execute(sa.text("SELECT count(*) FROM journal_fenced_tick")).scalar())
            if engine.dialect.name == "postgresql":
                stale = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM journal_commit_order f WHERE f.kind = 'fenced' "
                        "AND EXISTS (SELECT 1 FROM journal_commit_order a "
                        "WHERE a.kind = 'acquired' AND a.lock_name = f.lock_name "
                        "AND a.epoch > f.epoch AND a.seq < f.seq)"
                    )
                ).scalar()
                return int(stale), total, "commit order"
            acquired = conn.execute(
                sa.text(
                    "SELECT lock_name, epoch, at FROM celery_master_history "
                    "WHERE event = 'acquired'"
                )
            ).all()
            ticks = conn.execute(
                sa.text("SELECT lock_name, epoch, at FROM journal_fenced_tick")
            ).all()
    finally:
        engine.dispose()
    took: dict[str, dict[int, float]] = defaultdict(dict)
    for lock, epoch, at in acquired:
        took[lock][epoch] = at
    stale = 0
    for lock, epoch, at in ticks:
        newer = [t for e, t in took[lock].items() if e > epoch]
        stale += bool(newer and at >= min(newer))
    return stale, total, "write timestamp (SQLite)"


def overlaps(starts: list[dict[str, Any]], ticks: list[dict[str, Any]]) -> int:
    """Ticks that claimed mastership after a newer epoch of the same lock had started."""
    began = {s["epoch"]: s["t"] for s in starts}
    count = 0
    for tick in ticks:
        newer = [t for ep, t in began.items() if ep > tick["epoch"]]
        if tick["is_master"] and newer and tick["at"] >= min(newer):
            count += 1
    return count


def _in_any(t: float, windows: Iterable[Window]) -> bool:
    return any(a <= t < b for a, b in windows)


def availability(
    ticks: list[dict[str, Any]], began: float, finished: float, excluded: list[Window]
) -> dict[str, Any]:
    """Share of 1 s bins with a master tick, bins touching a window left out.

    ``missing_at``: seconds after ``began`` of the first counted bins with no master;
    ``longest_gap``: the longest time between two master ticks outside every window.
    """
    bins = {int(t["at"]) for t in ticks if t["is_master"]}
    counted = [
        b
        for b in range(int(began) + 1, int(finished))
        if not any(a < b + 1 and b < z for a, z in excluded)
    ]
    missing = [b for b in counted if b not in bins]
    at = sorted(t["at"] for t in ticks if t["is_master"] and began <= t["at"] <= finished)
    gaps = [
        (b - a, a)
        for a, b in zip(at, at[1:], strict=False)
        if not any(w0 < b and a < w1 for w0, w1 in excluded)
    ]
    longest = max(gaps, default=(0.0, began))
    return {
        "share": round(1 - len(missing) / max(1, len(counted)), 4),
        "bins": len(counted),
        "missing_at": [round(b - began, 1) for b in missing[:8]],
        "longest_gap": round(longest[0], 2),  # between master ticks, outside every window
        "longest_gap_at": round(longest[1] - began, 1),
    }


def beat_slots(
    sends: list[dict[str, Any]],
    period: float,
    began: float,
    finished: float,
    excluded: list[Window],
    left_out_pids: set[int],
) -> dict[str, Any]:
    """Sends per wall-clock slot of one app's beat: duplicates, and lost slots outside windows.

    Sends of a worker whose clock was stepped are left out, and so are the slots
    from its first send to the end: its beat sent by its own, stepped, wall clock
    and stored those slots, and the next master resumes from them (Celery beat
    schedules by wall time), an hour off.
    """
    mine = [e for e in sends if e.get("slot") is not None and e["pid"] not in left_out_pids]
    stepped = [e["t"] for e in sends if e["pid"] in left_out_pids]
    windows = list(excluded)
    if stepped:
        windows.append((min(stepped) - period, finished + period))
    per_slot = Counter(e["slot"] for e in mine)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    first = math.floor(began / period) + 1
    last = math.floor(finished / period) - 1
    expected = [
        s
        for s in range(first, last + 1)
        if not _in_any(s * period, windows) and not _in_any((s + 1) * period - 1e-6, windows)
    ]
    lost = [s for s in expected if s not in per_slot]
    return {
        "sends": len(mine),
        "slots_counted": len(expected),
        "duplicates": sum(n - 1 for n in duplicates.values()),
        "duplicate_slots": sorted(duplicates)[:5],
        "lost": len(lost),
        "lost_at": [round(s * period - began, 1) for s in lost[:8]],
        "left_out_sends": len(sends) - len(mine),
    }


RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Empty)\b")


def _message(line: str) -> str:
    return line.split("] ", 1)[-1] if line.startswith("[") else line


def _raised(before: list[str], after: list[str]) -> str:
    """``thread: Exception`` for a traceback (Celery logs stderr in fragments)."""
    thread = ""
    for i, line in enumerate(before):
        if "Exception in thread" in line and i + 1 < len(before):
            thread = _message(before[i + 1]).strip() + ": "
    for line in after[:3000]:
        if RAISED.match(_message(line)):
            return (thread + _message(line))[:200]
    return thread + "(exception line not found)"


def error_lines(logs: Iterable[str]) -> tuple[list[str], dict[str, int], list[str]]:
    """(ERROR/CRITICAL lines not allowed, allowed ones counted by reason, tracebacks).

    A thread that dies prints its traceback to stderr, which Celery logs at
    WARNING: each traceback is reported by the exception it ends with.
    """
    bad: list[str] = []
    allowed: Counter[str] = Counter()
    tracebacks: list[str] = []
    for text in logs:
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "Traceback (most recent call last)" in line:
                tracebacks.append(_raised(lines[max(0, i - 3) : i], lines[i + 1 :]))
            if "ERROR/" not in line and "CRITICAL/" not in line:
                continue
            reason = next((r for p, r in ALLOWED_ERRORS.items() if re.search(p, line)), None)
            if reason is None:
                bad.append(line.split("] ", 1)[-1][:200])
            else:
                allowed[reason] += 1
    return bad, dict(allowed), tracebacks


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    p95 = values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p95": round(p95, 2),
        "max": round(values[-1], 2),
    }


def print_report(r: dict[str, Any]) -> None:
    print(
        f"\nchaos soak ({r['mode']}): seed {r['seed']}, {r['duration']} s, {r['workers']} workers,"
        f" {r['locks']} locks, {r['db']} leases, {r['broker']} broker"
    )
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())))
    print("fault log (kind, at s, window s): " + ", ".join(map(str, r["fault_log"])))
    rows = [
        ("overlaps (two masters at once)", r["overlaps"]),
        (
            f"stale fenced writes accepted ({r['stale_judged_by']})",
            f"{r['stale_fenced_writes_accepted']} (of {r['fenced_writes']} fenced writes)",
        ),
        ("lost control commands", r["lost_control_commands"]),
        ("recovery failures", len(r["recovery_failures"])),
        ("locks without a master at the end", ", ".join(r["unrecovered"]) or 0),
        ("worker crashes (exits nobody caused)", len(r["worker_crashes"])),
        ("ERROR/CRITICAL lines not allowed", len(r["error_lines"])),
        ("tracebacks in worker logs", len(r["tracebacks"])),
    ]
    for label, value in rows:
        print(f"{label:<48}{value}")
    for line in r["error_lines"][:8]:
        print(f"    {line}")
    for line in sorted(set(r["tracebacks"]))[:4]:
        print(f"    traceback after: {line}")
    for reason, n in r["allowed_errors"].items():
        print(f"    allowed: {n} x {reason}")
    print_evidence(r)
    late = r["late_broadcasts"]
    if late["n"]:
        print(
            f"{'late broadcasts (clean / n)':<48}{late['clean']} / {late['n']}: "
            f"releases applied {late['releases_applied']} (once each is right), "
            f"{late['undone_enables']} enables undone"
        )
    print(f"{'lock':<16}{'availability':>13}{'bins':>6}{'longest gap':>12}  no master at (s)")
    for lock, a in r["availability"].items():
        print(
            f"{lock:<16}{a['share']:>13.4f}{a['bins']:>6}{a['longest_gap']:>12.2f}"
            f"  {a['missing_at'] or ''}"
        )
    if r["beat"]:
        print(f"{'beat of app':<16}{'sends':>6}{'slots':>6}{'dups':>6}{'lost':>6}{'left out':>9}")
        for app, b in r["beat"].items():
            print(
                f"{app:<16}{b['sends']:>6}{b['slots_counted']:>6}{b['duplicates']:>6}"
                f"{b['lost']:>6}{b['left_out_sends']:>9}"
            )
    print(f"{'failover after':<16}{'n':>4}{'p50':>8}{'p95':>8}{'max':>8}")
    for kind, p in sorted(r["failover"].items()):
        if p:
            print(f"{kind:<16}{p['n']:>4}{p['p50']:>8.2f}{p['p95']:>8.2f}{p['max']:>8.2f}")
