"""One simulated run drawn from its seed: the cluster, the timing, and the faults at their times.

Faults (each at a step boundary the seed picks): a worker paused (its job
too), crashed without a goodbye and restarted under the same node name,
stopped gracefully and restarted, a worker joining or leaving; the database
down for a while; statements that fail, commit with their reply lost, or (a
takeover behind a fence) wait until their bound; hints late, twice or never;
operator commands (disable then enable, release, forget) at any moment.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import OperationalError

from bench.sim.sched import Scheduler, SimRuntime
from bench.sim.world import Faults, SimStore, SimWorker, World
from celery_master.ops.watch import silent_for_a_ttl
from celery_master.settings import JobSettings
from celery_master.worker.commands import enabled_command

__all__ = ["TIMINGS", "Run", "simulate"]

# (init_delay, check, heartbeat, retries): the defaults, and ttl well above the hint-free bound
TIMINGS = [(1.0, 1.0, 1.0, 3), (0.5, 0.5, 1.0, 9), (1.0, 1.0, 2.0, 3), (0.2, 0.2, 0.5, 4)]
LOCKS = ["A", "B", "C", "D"]
KINDS = [
    "pause",
    "crash",
    "graceful",
    "outage",
    "disable",
    "release",
    "forget",
    "join",
    "leave",
    "dbclock",
    "late-command",
]


@dataclass
class Run:
    seed: int
    faults: list[tuple[float, str, str]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    steps: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    virtual: float = 0.0


def simulate(seed: int, duration: float = 30.0, folder: Path | None = None) -> Run:
    rng = random.Random(seed)
    timing = JobSettings(*rng.choice(TIMINGS))
    faults = Faults(
        fail=rng.choice([0.0, 0.02, 0.05]),
        lost=rng.choice([0.0, 0.02, 0.05]),
        takeover_wait=rng.choice([0.0, 0.5, 1.0]),
    )
    sched = Scheduler(rng)
    kinds = rng.sample(KINDS, rng.randint(2, 5))
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        world = World(sched, Path(tmp) / "leases.sqlite3", timing, faults)
        world.hint_drop, world.hint_twice = rng.choice([0.0, 0.2]), rng.choice([0.0, 0.2])
        locks = LOCKS[: rng.randint(1, len(LOCKS))]
        run = Run(seed)
        world.checks.fault("start", "-")
        if rng.random() < 0.5:
            sched.stall = (0.0005, 1.5 * timing.self_stop_after, world.checks.stalled)
        nodes = [f"w{i}" for i in range(rng.randint(2, 4))]
        for node in nodes:
            world.add_worker(node, _lock_set(rng, locks))
        end_faults = duration
        t = timing.init_delay + timing.ttl
        while True:
            t += rng.expovariate(1 / timing.ttl)
            if t >= end_faults:
                break
            kind = rng.choice(kinds)
            sched.at(t, _fault(world, rng, kind, nodes, locks, run))
        tail = 3 * timing.ttl + 6 * timing.check_interval + 2 * timing.heartbeat_interval + 6
        try:
            sched.run_until(end_faults + tail, world.checks.step)
        finally:
            run.violations = list(world.checks.violations)
            run.trace = list(sched.trace)
            run.steps, run.virtual = sched.steps, sched.time
            run.counts = dict(world.checks.counts)
            sched.close()
            world.store.engine.dispose()
    return run


def _lock_set(rng: random.Random, locks: list[str]) -> dict[str, int]:
    chosen = [n for n in locks if rng.random() < 0.7] or [rng.choice(locks)]
    return {n: rng.choice([1, 1, 2]) for n in chosen}


def _fault(
    world: World, rng: random.Random, kind: str, nodes: list[str], locks: list[str], run: Run
) -> Callable[[], None]:
    def act() -> None:
        sched, s = world.sched, world.settings
        live = world.live()
        now = sched.time
        run.faults.append((round(now, 3), kind, ""))
        if kind == "pause" and live:
            w = rng.choice(live)
            until = now + rng.uniform(0.2, 2.0) * s.ttl
            sched.pause(w.owner, until)
            world.checks.paused(w.owner, now, until)
        elif kind in ("crash", "graceful", "leave") and len(live) > 1:
            w = rng.choice(live)
            _take_down(world, w, kind)
            if kind != "leave":
                sched.at(now + rng.uniform(0.1, 2.0) * s.ttl, lambda: _restart(world, w))
        elif kind == "join":
            node = f"w{len(nodes)}"
            nodes.append(node)
            world.add_worker(node, _lock_set(rng, locks))
        elif kind == "outage":
            length = rng.uniform(0.2, 1.5) * s.ttl
            world.faults.outages.append((now, now + length))
            world.checks.fault("outage", "db", f"for {length:.2f}s")
        elif kind == "dbclock":  # the database host's clock steps: only display may change
            world.db_offset += rng.choice([-3600.0, 3600.0])
            world.checks.fault("dbclock", "db", f"offset {world.db_offset:+.0f}s")
        elif kind in ("disable", "release", "forget"):
            _operator(world, rng, kind, rng.choice(locks))
        elif kind == "late-command" and live:
            _late_command(world, rng, rng.choice(live), rng.choice(locks))

    return act


def _take_down(world: World, w: SimWorker, kind: str) -> None:
    if kind == "crash":
        scope = world.checks.scope_of(w.owner)
        _exit(world, w)
        world.checks.fault("crash", w.owner, "", scope)
    else:  # SIGTERM: the step hands over, then the process is gone
        w.leaving = True
        w.elector.begin_handover()
        world.checks.fault(kind, w.owner, "", world.checks.scope_of(w.owner))

        exit_at = world.sched.time + 3 * world.settings.heartbeat_interval + 2
        world.sched.at(exit_at, lambda: _exit(world, w))


def _exit(world: World, w: SimWorker) -> None:
    """The process is gone: whatever of its hand-over has not finished dies with it."""
    if w.alive:
        w.alive = False
        world.sched.kill(w.owner)
        world.checks.crashed(w)


def _restart(world: World, w: SimWorker) -> None:
    _exit(world, w)
    world.add_worker(w.node, w.locks)


def _operator(world: World, rng: random.Random, kind: str, lock: str) -> None:
    """``celery master disable|enable|release|forget``: SQL from outside any worker, then a hint."""
    store = SimStore(world, "op", faulty=False)
    s = world.settings

    def retried(fn: Callable[[], object]) -> object:
        """The operator runs a command again until the database answers."""
        while True:
            try:
                return fn()
            except OperationalError:
                world.sched.block("operator retries", until=world.sched.time + 1.0)

    def command() -> None:
        if kind == "disable":
            world.checks.fault("disable", "op", lock, frozenset([lock]))
            retried(lambda: store.set_enabled(lock, False, "sim", "drill"))
            world.sched.block(
                "disabled for a while", until=world.sched.time + rng.uniform(0.5, 2) * s.ttl
            )
            retried(lambda: store.set_enabled(lock, True, "sim", None))
        elif kind == "release":
            world.checks.fault("release", "op", lock, frozenset([lock]))
            retried(lambda: store.request_release(lock, "sim"))
        else:  # as `celery master forget` does: a held lease is watched for its ttl first
            world.checks.fault("forget", "op", lock, frozenset([lock]))
            lease = retried(lambda: store.read([lock])).get(lock)  # type: ignore[attr-defined]
            if lease is None:
                return
            seen = None
            if lease.holder is not None:
                seen = retried(  # type: ignore[assignment]
                    lambda: silent_for_a_ttl(
                        store,  # type: ignore[arg-type]
                        lease,
                        clock=lambda: world.sched.time,
                        sleep=lambda d: world.sched.block(
                            "forget watches", until=world.sched.time + d
                        ),
                    )
                )
                if seen is None:
                    return
            retried(lambda: store.forget(lock, "sim", seen))
        for w in world.live():
            w.elector.wake([lock])

    SimRuntime(world.sched, "op").spawn(command, f"operator-{kind}")


def _late_command(world: World, rng: random.Random, worker: SimWorker, lock: str) -> None:
    """A bare ``mastercontrol disable`` whose statement runs late, and an ``enable`` meanwhile.

    The worker's control thread runs the package's own command (worker/commands.py)
    after a slow database; the operator's ``celery master enable`` lands between its
    receipt and its statement. One command, one effect: the late disable must not
    undo the enable (checks.py judges every such statement against its receipt).
    """
    sched = world.sched
    received = sched.time
    owner = f"ctl-{worker.owner}-{received:.3f}"
    world.checks.command_received(owner, received)
    store = SimStore(world, owner, faulty=False)
    slow = rng.uniform(0.2, 3.0)
    apply = enabled_command(
        set(worker.locks),
        lock,
        False,
        "unknown (celery control)",
        "late",
        received,
        now=lambda: sched.time,
    )

    def statement() -> None:
        sched.block("control statement waits on a slow database", until=sched.time + slow)
        with contextlib.suppress(OperationalError):  # the database was down: nothing applied
            apply(store, str(worker.holder))  # type: ignore[arg-type]

    def operator_enable() -> None:
        with contextlib.suppress(OperationalError):
            SimStore(world, "op", faulty=False).set_enabled(lock, True, "sim", None)

    world.checks.fault("late-command", owner, lock, frozenset([lock]))
    SimRuntime(sched, owner).spawn(statement, "control-disable")
    sched.at(
        received + rng.uniform(0.0, slow),
        lambda: SimRuntime(sched, "op").spawn(operator_enable, "operator-enable"),
    )
