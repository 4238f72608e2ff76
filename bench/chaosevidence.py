"""Evidence that the faults the chaos soak claims happened, read from what they left behind.

"0 stale fenced writes accepted" says something only if stale writes were
attempted: the journal app journals every write the fence refused, with
NotMaster's reason, and every job tries one write after its term has ended
(in its stop()), which the fence must refuse. A wall-clock step says
something only if a clock moved: the stepped worker journals its own wall
clock, and the soak reads the database server's back after each step. Kinds
the soak was asked for but cannot inject here, and kinds it never got to,
are reported by name.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["STEP", "clock_steps", "fence_refusals", "print_evidence", "worker_clock_offsets"]

STEP = 3600.0  # the soak steps clocks by +-1 h
#: NotMaster's reasons (celery_master/jobs/job.py, store/fence.py), by where they were judged
REFUSED_BY = {
    "a newer epoch holds the lease": "database",  # a stale epoch reached the database
    "this worker's term has ended": "locally",  # is_master() was already false
}


def fence_refusals(events: list[dict[str, Any]]) -> dict[str, int]:
    """Fenced writes refused, by who refused them; ``unconfirmed``: the fence itself failed."""
    counts: Counter[str] = Counter({"database": 0, "locally": 0, "unconfirmed": 0})
    for e in events:
        why = str(e.get("why", ""))
        counts[next((by for text, by in REFUSED_BY.items() if text in why), "unconfirmed")] += 1
    return dict(counts)


def clock_steps(injected: int, offsets: list[float]) -> dict[str, Any]:
    """Offsets seen (wall clock minus the host's timeline), rounded to the minute."""
    seen = sorted({round(o / 60) * 60 for o in offsets})
    return {
        "injected": injected,
        "offsets_seen": seen,
        "moved": any(abs(o) >= STEP - 60 for o in seen),
    }


def worker_clock_offsets(events: list[dict[str, Any]]) -> list[float]:
    return [e["wall"] - e["t"] for e in events]


def print_evidence(r: dict[str, Any]) -> None:
    refused = r["stale_writes_refused"]
    print(
        f"{'stale fenced writes refused':<48}{sum(refused.values())}: "
        + ", ".join(f"{n} {by}" for by, n in refused.items())
        + f"; {r['stale_writes_passed']} passed after their term"
    )
    for where, c in r["clock_steps"].items():
        if c["injected"]:
            print(
                f"{'clock steps on the ' + where:<48}{c['injected']} injected, offsets seen "
                f"{c['offsets_seen']} s"
            )
    for kind, why in r["not_applicable"].items():
        print(f"    not injected: {kind} ({why})")
    if r["never_ran"]:
        print(f"    never got to run: {', '.join(r['never_ran'])}")
