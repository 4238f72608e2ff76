"""Which apps, lock names and workers the chaos soak runs: homogeneous, or ``--hetero``.

The heterogeneous layout is the real deployment issue 10 describes: two apps
share one lease database; each app's workers run different lock names; HA beat
runs on some workers of each app only; weights differ; one lock runs on a
single worker; and a ``prefer`` glob names a node of the *other* app, which
does not run that lock (it must never be yielded there).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

__all__ = ["AppSpec", "Layout", "WorkerSpec", "layout_for"]

BEAT = ["--master-beat"]


@dataclass
class WorkerSpec:
    name: str
    locks: list[str]
    beat: bool = False
    faketime: bool = False  # the worker whose wall clock the clock_worker fault steps

    @property
    def env(self) -> dict[str, str]:
        return {"JOURNAL_LOCKS": ",".join(self.locks)}

    @property
    def args(self) -> list[str]:
        return BEAT if self.beat else []


@dataclass
class AppSpec:
    name: str
    locks: list[str]
    workers: list[WorkerSpec]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def beat_workers(self) -> list[str]:
        return [w.name for w in self.workers if w.beat]


@dataclass
class Layout:
    name: str
    apps: list[AppSpec]


def layout_for(args: argparse.Namespace) -> Layout:
    if args.hetero:
        return hetero()
    locks = [f"CHAOS-{i}" for i in range(args.locks)]
    workers = [WorkerSpec(f"w{i + 1}", locks, beat=args.beat) for i in range(args.workers)]
    workers[-1].faketime = True
    env = {"JOURNAL_BEAT_SLOTS": "1"} if args.beat else {}
    return Layout("homogeneous", [AppSpec("chaos", locks, workers, env)])


def hetero() -> Layout:
    heavy, light, solo = "A-HEAVY", "A-LIGHT", "A-SOLO"
    app_a = AppSpec(
        "chaos-a",
        [heavy, light, solo],
        [
            WorkerSpec("a1", [heavy, light], beat=True),
            WorkerSpec("a2", [heavy, light], beat=True),
            # no beat here: a stepped beat master writes its wall-clock slots into the state
            # the next master resumes from (Celery beat schedules by wall time), so its app's
            # slots could not be counted for the rest of the soak
            WorkerSpec("a3", [heavy, solo], faketime=True),
        ],
        {
            "JOURNAL_APP_NAME": "chaos-a",
            "JOURNAL_WEIGHTS": f"{heavy}:2",
            "JOURNAL_PREFER": f"{light}:b1@*",  # a node of app B: it does not run A-LIGHT
            "JOURNAL_BEAT_SLOTS": "1",
        },
    )
    app_b = AppSpec(
        "chaos-b",
        ["B-1", "B-2"],
        [
            WorkerSpec("b1", ["B-1", "B-2"], beat=True),
            WorkerSpec("b2", ["B-1", "B-2"], beat=True),
        ],
        {"JOURNAL_APP_NAME": "chaos-b", "JOURNAL_WEIGHTS": "B-2:3", "JOURNAL_BEAT_SLOTS": "1"},
    )
    return Layout("heterogeneous", [app_a, app_b])
