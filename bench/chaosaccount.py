"""The chaos soak's accounting: windows excused by faults, and the report it prints.

A mixin of ``bench.chaos.Soak`` (as ``bench.chaosfaults.FaultsMixin`` holds
its faults): what the soak observed is judged here, never where it is made.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from bench import chaosevidence as evidence
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
    kinds: list[str]
    skipped: dict[str, str]
    db_clock_offsets: list[float]

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
        stepping = any(k == "clock_worker" for k, _, _ in self.faults)
        beat = {}
        for app in self.layout.apps:
            if not app.beat_workers:
                continue
            workers = self.clusters[app.name].workers
            # this app's stepped workers only: another app's stepped beat is not this one's
            faked = {w.pid for w in workers if "FAKETIME_TIMESTAMP_FILE" in w.extra_env}
            stepped = faked if stepping else set()
            beat[app.name] = rep.beat_slots(  # what the broker accepted: a retry is one send
                self.clusters[app.name].journal.events("published"),
                BEAT_PERIOD,
                began,
                finished,
                self.windows() + self.stepped_windows(stepped),
                stepped,
            )
        bad, allowed, tracebacks = rep.error_lines(
            w.log_text() for c in self.clusters.values() for w in c.workers
        )
        journals = [c.journal for c in self.clusters.values()]
        injected = Counter(k for k, _, _ in self.faults)
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
            "faults": dict(injected),
            "not_applicable": self.skipped,
            "never_ran": sorted(set(self.kinds) - set(injected)),
            "fault_log": [(k, round(at - began, 1), round(w, 1)) for k, at, w in self.faults],
            "overlaps": overlaps,
            "stale_fenced_writes_accepted": stale,
            "fenced_writes": fenced,
            "stale_judged_by": judged,
            "stale_writes_refused": evidence.fence_refusals(
                [e for j in journals for e in j.events("fence-refused")]
            ),
            "stale_writes_passed": sum(len(j.events("fence-passed-after-term")) for j in journals),
            "clock_steps": {
                "worker": evidence.clock_steps(
                    injected["clock_worker"],
                    evidence.worker_clock_offsets([e for j in journals for e in j.events("clock")]),
                ),
                "database": evidence.clock_steps(injected["clock_db"], self.db_clock_offsets),
            },
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
        """Per late broadcast measured alone: how often a release was applied (once is
        right: the holder at receipt, never the late reader); enables a late disable undid."""
        applied, undone, clean = [], 0, 0
        for late in self.late:
            lock, end = late["lock"], late["resumed"] + 2 * self.ttl + self.check + 2
            others = [
                (w0, w1)
                for w0, w1 in self.windows()
                if w0 != late["at"] and w0 < end and late["at"] - self.ttl < w1
            ]
            if others or None in (late.get("history_from"), late.get("history_to")):
                continue  # another fault's window overlaps, or the rows were not readable
            clean += 1
            if late["action"] == "release":
                applied.append(self.releases_requested(late))
            else:
                ticks = self.cluster_of(lock).journal.events("tick", lock)
                undone += not any(
                    t["is_master"] and late["resumed"] + self.ttl + self.check + 1 < t["at"] < end
                    for t in ticks
                )
        return {
            "clean": clean,
            "releases_applied": applied,
            "undone_enables": undone,
            "n": len(self.late),
        }

    def releases_requested(self, late: dict[str, Any]) -> int:
        """``release-requested`` history rows of the lock written during the late window."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM celery_master_history WHERE lock_name = :n "
                            "AND event = 'release-requested' AND id > :a AND id <= :b"
                        ),
                        {"n": late["lock"], "a": late["history_from"], "b": late["history_to"]},
                    ).scalar()
                )
        finally:
            engine.dispose()
