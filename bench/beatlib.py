"""Shared by bench/beat.py and bench/peers.py: beat instances, faults, gaps and duplicates.

A *system* is three instances that each could send the beat schedule (our
workers with master_beat, or a peer's beat processes). Every send is journaled
by the sending process (``before_task_publish``). A beat *gap* is the time from
the last send before a fault to the first send after it, minus one period; a
*duplicate* is two sends less than half a period apart (one slot sent twice).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PERIOD = 1.0
CAP = 30.0  # seconds a fault may take before we call it "no failover"


@dataclass
class System:
    name: str
    argv: Callable[[int], list[str]]
    env: dict[str, str]
    journal: Path
    ready: Callable[[Path], bool] = lambda log: True
    procs: list[subprocess.Popen | None] = field(default_factory=list)  # type: ignore[type-arg]
    logs: list[Path] = field(default_factory=list)
    faults: list[tuple[str, float]] = field(default_factory=list)
    boots: int = 0

    def start(self, index: int) -> None:
        self.boots += 1
        log = self.journal.parent / f"{self.name}-{index}-{self.boots}.log"
        proc = subprocess.Popen(
            self.argv(index),
            cwd=ROOT,
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while len(self.procs) <= index:
            self.procs.append(None)
            self.logs.append(log)
        self.procs[index], self.logs[index] = proc, log
        end = time.monotonic() + 60
        while not self.ready(log) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)

    def sends(self) -> list[dict]:
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return sorted((e for e in out if e.get("event") == "send"), key=lambda e: e["t"])

    def instance_of(self, pid: int) -> int | None:
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                continue
            try:
                if os.getpgid(pid) == proc.pid:
                    return i
            except ProcessLookupError:
                return None
        return None

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_sends(system: System, n: int, after: float, timeout: float) -> list[dict] | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        later = [e for e in system.sends() if e["t"] > after]
        if len(later) >= n:
            return later
        time.sleep(0.05)
    return None


def inject(
    system: System, kind: str, outage: Callable[[], None] | None = None
) -> tuple[bool, float | None]:
    """One fault on the current sender: (injected, gap; None when no send came within CAP).

    No fault is injected when no live instance is sending (e.g. a peer whose dead
    instance's lock outlives the run): counting that as a failover would measure
    nothing, so the caller reports it as "no fault injected".
    """
    if kind in ("crash", "graceful"):
        recent = wait_sends(system, 2, time.time(), CAP)
        index = system.instance_of(recent[-1]["pid"]) if recent else None
        if index is None:
            return False, None
    at = time.time()
    if kind == "crash":
        proc = system.procs[index]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
    elif kind == "graceful":
        proc = system.procs[index]
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
    elif kind == "outage" and outage is not None:
        outage()
    else:
        return False, None
    system.faults.append((kind, at))
    before = [e["t"] for e in system.sends() if e["t"] <= at]
    after = wait_sends(system, 1, at, CAP)
    if kind in ("crash", "graceful"):
        proc = system.procs[index]
        assert proc is not None
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        system.start(index)
    if after is None or not before:
        return True, None
    return True, max(0.0, after[0]["t"] - before[-1] - PERIOD)


def duplicates(system: System) -> int:
    sends = system.sends()
    return sum(1 for a, b in zip(sends, sends[1:], strict=False) if b["t"] - a["t"] < PERIOD / 2)


@dataclass
class Gaps:
    """Per scenario: the gap of every injected fault, and how many found nothing to hit."""

    values: dict[str, list[float | None]] = field(default_factory=dict)
    not_injected: dict[str, int] = field(default_factory=dict)

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys([*self.values, *self.not_injected]))


def run_system(
    system: System, scenarios: list[str], repeats: int, outage: Callable[[], None] | None = None
) -> Gaps:
    gaps = Gaps()
    try:
        for i in range(3):
            system.start(i)
        if wait_sends(system, 3, 0, 60) is None:
            raise RuntimeError(f"{system.name}: no beat sends; see {system.logs[0]}")
        for kind in scenarios:
            for _ in range(repeats):
                injected, gap = inject(system, kind, outage)
                if injected:
                    gaps.values.setdefault(kind, []).append(gap)
                else:
                    gaps.not_injected[kind] = gaps.not_injected.get(kind, 0) + 1
                wait_sends(system, 3, time.time(), CAP)
    finally:
        system.stop_all()
    return gaps


def fmt_gaps(values: list[float | None]) -> str:
    """``n median min max`` of the injected faults (``-`` when none was injected)."""
    done = [v for v in values if v is not None]
    missed = len(values) - len(done)
    if not done:
        over = f"{'>' + str(int(CAP)):>7}" if values else f"{'-':>7}"
        return f"{len(values):>3} {over} {'-':>7} {'-':>7}"
    med_s = f"{statistics.median(done):7.2f}" if not missed else f"{'>' + str(int(CAP)):>7}"
    tail = f" ({missed} >{int(CAP)}s)" if missed else ""
    return f"{len(values):>3} {med_s} {min(done):7.2f} {max(done):7.2f}{tail}"


def not_injected_note(count: int) -> str:
    """Said beside a row whose faults found no live sender to hit."""
    return f"  no fault injected x{count}" if count else ""


def median_or_cap(values: list[float | None]) -> float | None:
    """Median with a missed failover counted as CAP; None when no fault was injected."""
    if not values:
        return None
    return statistics.median([CAP if v is None else v for v in values])


def draw(systems: list[System], path: Path) -> None:
    """Timeline: each send as a dot coloured by sending instance; faults as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(systems), 1, figsize=(11, 1.1 * len(systems) + 0.6), sharex=False, squeeze=False
    )
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    for ax, system in zip(axes[:, 0], systems, strict=True):
        sends = system.sends()
        if not sends:
            continue
        t0 = sends[0]["t"]
        pids = sorted(
            {e["pid"] for e in sends}, key=lambda p: next(e["t"] for e in sends if e["pid"] == p)
        )
        for e in sends:
            ax.plot(
                e["t"] - t0,
                0,
                "|",
                markersize=14,
                color=colours[pids.index(e["pid"]) % len(colours)],
            )
        for kind, at in system.faults:
            ax.axvline(
                at - t0,
                color={"crash": "red", "graceful": "green"}.get(kind, "orange"),
                linewidth=1,
            )
        ax.set_yticks([])
        ax.set_ylabel(system.name, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlabel(
        "seconds; ticks = beat sends coloured by sending process; "
        "lines = faults (red kill -9, green SIGTERM, orange DB outage)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def python() -> str:
    return sys.executable
