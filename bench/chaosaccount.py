"""The chaos soak's accounting: windows excused by faults, and the report it prints.

A mixin of ``bench.chaos.Soak`` (as ``bench.chaosfaults.FaultsMixin`` holds
its faults): what the soak observed is judged here, never where it is made.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from bench import chaosreport as rep

BEAT_PERIOD = 1.0


class AccountingMixin:
    """Needs the soak's ``faults``, ``late``, ``control_windows``, ``beat_holders``, timing."""

    args: Any
    layout: Any
    clusters: dict[str, Any]
    faults: list[tuple[str, float, float]]
    late: list[dict[str, Any]]
    control_windows: list[tuple[str, float, float]]
    beat_holders: list[tuple[float, int]]
    failovers: dict[str, list[float]]
    recovery_failures: list[Any]
    url: str
    ttl: float
    check: float

    def locks(self) -> list[str]:
        raise NotImplementedError

    def cluster_of(self, lock: str) -> Any:
        raise NotImplementedError

    def stepped_windows(self, stepped: set[int]) -> list[rep.Window]:
        """While a stepped worker held a beat lease, and a failover window after."""
        after = 0.5 + self.ttl + self.check + 2 + BEAT_PERIOD
        return [(t - 0.5, t + after) for t, pid in self.beat_holders if pid in stepped]

    # -- the report -----------------------------------------------------------------
    def windows(self, lock: str | None = None) -> list[rep.Window]:
        out = [(at, at + allowed) for _k, at, allowed in self.faults if allowed]
        for name, off, on in self.control_windows:
            if lock is None or name == lock:
                out.append((off, on + self.ttl + self.check + 1))
        for late in self.late:
            if lock is None or late["lock"] == lock:
                out.append((late["at"], late["resumed"] + 2 * self.ttl + self.check + 2))
        return out

    def report(
        self, began: float, finished: float, crashes: list[str], unrecovered: list[str]
    ) -> dict[str, Any]:
        overlaps, availability = 0, {}
        for lock in self.locks():
            journal = self.cluster_of(lock).journal
            ticks = journal.events("tick", lock)
            overlaps += rep.overlaps(journal.starts(lock), ticks)
            availability[lock] = rep.availability(ticks, began, finished, self.windows(lock))
        try:
            stale, fenced, judged = rep.stale_fenced_writes(self.url)
        except sa.exc.OperationalError as exc:  # never came back: the report says so
            stale, fenced, judged = -1, 0, f"not judged, database unreachable: {exc.orig}"
        stepped = {
            w.pid
            for c in self.clusters.values()
            for w in c.workers
            if "FAKETIME_TIMESTAMP_FILE" in w.extra_env
            and any(k == "clock_worker" for k, _, _ in self.faults)
        }
        beat = {
            app.name: rep.beat_slots(  # what the broker accepted: a retried publish is one send
                self.clusters[app.name].journal.events("published"),
                BEAT_PERIOD,
                began,
                finished,
                self.windows() + self.stepped_windows(stepped),
                stepped,
            )
            for app in self.layout.apps
            if app.beat_workers
        }
        bad, allowed, tracebacks = rep.error_lines(
            w.log_text() for c in self.clusters.values() for w in c.workers
        )
        return {
            "seed": self.args.seed,
            "mode": self.layout.name,
            "duration": round(finished - began, 1),
            "workers": sum(len(a.workers) for a in self.layout.apps),
            "locks": len(self.locks()),
            "ttl": self.ttl,
            "check_interval": self.check,
            "db": self.args.db,
            "broker": self.args.broker,
            "faults": dict(Counter(k for k, _, _ in self.faults)),
            "fault_log": [(k, round(at - began, 1), round(w, 1)) for k, at, w in self.faults],
            "overlaps": overlaps,
            "stale_fenced_writes_accepted": stale,
            "fenced_writes": fenced,
            "stale_judged_by": judged,
            "availability": availability,
            "beat": beat,
            "late_broadcasts": self.late_outcomes(),
            "failover": {k: rep.percentiles(v) for k, v in self.failovers.items()},
            "lost_control_commands": self.lost_control_commands(),
            "error_lines": bad,
            "allowed_errors": allowed,
            "tracebacks": tracebacks,
            "recovery_failures": self.recovery_failures,
            "unrecovered": unrecovered,
            "worker_crashes": crashes,
        }

    def lost_control_commands(self) -> int:
        lost = 0
        for lock, off, on in self.control_windows:
            ticks = self.cluster_of(lock).journal.events("tick", lock)
            lost += any(t["is_master"] and off + 2 * self.ttl < t["at"] < on for t in ticks)
        return lost

    def late_outcomes(self) -> dict[str, Any]:
        """Per late broadcast: hand-overs a release caused; enables a late disable undid."""
        extra, undone, clean = 0, 0, 0
        for late in self.late:
            lock, end = late["lock"], late["resumed"] + 2 * self.ttl + self.check + 2
            others = [
                at
                for k, at, _ in self.faults
                if k != "late_broadcast" and late["at"] - self.ttl < at < end
            ]
            if others:
                continue  # another fault moved this lock too: not a clean measurement
            clean += 1
            starts = [
                s for s in self.cluster_of(lock).journal.starts(lock) if late["at"] < s["t"] < end
            ]
            if late["action"] == "release":
                extra += max(0, len(starts) - 1)
            else:
                ticks = self.cluster_of(lock).journal.events("tick", lock)
                undone += not any(
                    t["is_master"] and late["resumed"] + self.ttl + self.check + 1 < t["at"] < end
                    for t in ticks
                )
        return {
            "clean": clean,
            "extra_handovers": extra,
            "undone_enables": undone,
            "n": len(self.late),
        }
