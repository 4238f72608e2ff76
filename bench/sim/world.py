"""Workers, the lease database and the faults around the package's real election.

Each simulated worker is a real ``Elector`` (round, lock states, spread,
terms, runner, watchdog) on a ``SimRuntime``; its store is the real
``LeaseStore`` on a real SQLite file, reached through ``SimStore``, which
makes every call a yield point and injects the run's statement faults. The
database's own clock (``now`` in SQL) is virtual time plus an offset the run
may step. Jobs journal their starts, stops and fenced writes to ``checks``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, event, func
from sqlalchemy.exc import OperationalError

from bench.sim.checks import Checks
from bench.sim.sched import Killed, Scheduler, SimRuntime
from celery_master.election.elector import Elector
from celery_master.errors import NotMaster
from celery_master.holder import Holder
from celery_master.jobs.job import MasterContext, MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine

__all__ = ["SimStore", "SimWorker", "World"]

DB_EPOCH = 1.8e9  # database time reads like Unix time
WRITES = Table(
    "sim_fenced_write",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("lock_name", String(200)),
    Column("epoch", Integer),
    Column("holder", String(255)),
)


def db_error(why: str) -> OperationalError:
    return OperationalError("simulated statement", {}, Exception(why))


@dataclass
class Faults:
    """Per-call statement faults and the windows in which the database is down."""

    fail: float = 0.0  # the statement fails before it runs
    lost: float = 0.0  # it commits, then its reply is lost
    takeover_wait: float = 0.0  # a takeover waits on a fence until its statement bound
    outages: list[tuple[float, float]] = field(default_factory=list)

    def down(self, now: float) -> bool:
        return any(a <= now < b for a, b in self.outages)


class SimStore:
    """The store as one worker reaches it: a yield point before and after every call."""

    def __init__(self, world: World, owner: str, faulty: bool = True) -> None:
        self._world, self._owner, self._faulty = world, owner, faulty
        self._store = world.store
        self.engine, self.dialect, self.now = (
            world.store.engine,
            world.store.dialect,
            world.store.now,
        )

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._store, name)
        if not callable(fn):
            return fn
        return lambda *a, **k: self._world.db_call(self._owner, name, fn, a, k, self._faulty)


class SimWorker:
    def __init__(self, world: World, node: str, locks: dict[str, int], generation: int) -> None:
        self.world, self.node, self.locks = world, node, dict(locks)
        self.owner = f"{node}/{generation}"
        self.holder = Holder(node, 1000 + generation, f"{node}g{generation}")
        self.alive = True
        self.leaving = False
        self.runtime = SimRuntime(world.sched, self.owner)
        jobs = [
            (world.job(self, name, weight), world.settings) for name, weight in self.locks.items()
        ]
        self.elector = Elector(
            SimStore(world, self.owner),  # type: ignore[arg-type]
            jobs,
            self.holder,
            notify=lambda names: world.broadcast(self, names),
            on_role_change=lambda n, role, epoch, why: world.checks.role_changed(
                self, n, role.value, epoch, why
            ),
            app_name="sim",
            runtime=self.runtime,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return self.owner


class World:
    def __init__(
        self,
        sched: Scheduler,
        path: Path,
        settings: JobSettings,
        faults: Faults,
        light: bool = False,
    ) -> None:
        """``light``: jobs that return at once (the scale runs), no per-call bookkeeping."""
        self.sched, self.settings, self.faults, self.light = sched, settings, faults, light
        self.calls: Counter[str] = Counter()
        self.rows_read = self.ticks_seen = 0
        self.db_offset = 0.0
        engine = create_lease_engine(f"sqlite:///{path}", timeout=settings.heartbeat_interval)
        event.listen(engine, "connect", self._register_now)
        self.store = LeaseStore(engine, now=func.sim_now())
        self.store.ensure_schema()
        WRITES.metadata.create_all(engine)
        self.checks = Checks(self)
        self.workers: list[SimWorker] = []
        self.hint_drop = self.hint_twice = 0.0
        self.hint_delay = (0.0, 0.05)
        logging.getLogger("celery_master").setLevel(logging.CRITICAL)

    def _register_now(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.create_function(
            "sim_now", 0, lambda: DB_EPOCH + self.sched.time + self.db_offset
        )

    # -- workers and jobs --------------------------------------------------------------
    def add_worker(self, node: str, locks: dict[str, int]) -> SimWorker:
        generation = sum(1 for w in self.workers if w.node == node)
        worker = SimWorker(self, node, locks, generation)
        self.workers.append(worker)
        if self.sched.time > 0:
            self.checks.fault("join", worker.owner, "", frozenset())
        worker.elector.start()
        return worker

    def live(self) -> list[SimWorker]:
        return [w for w in self.workers if w.alive]

    def job(self, worker: SimWorker, name: str, weight: int) -> MasterJob:
        if self.light:
            return MasterJob(name, lambda ctx: None, None, {"weight": weight})
        checks = self.checks
        period = self.settings.heartbeat_interval / 2

        def start(ctx: MasterContext) -> None:
            checks.start_entered(worker, ctx)
            try:
                while not ctx.stopping.wait(period):
                    self.fenced_write(worker, ctx)
            except Killed:
                raise
            finally:
                if worker.alive:
                    checks.start_returned(worker, ctx)

        def stop(ctx: MasterContext) -> None:
            checks.stop_called(worker, ctx)

        return MasterJob(name, start, stop, {"weight": weight})

    def fenced_write(self, worker: SimWorker, ctx: MasterContext) -> None:
        """A job's own write, made conditional on its term by ``ctx.fence`` (no switch inside)."""
        if self.faults.down(self.sched.time):
            return  # its own database is down too: the job rides it out, nothing written
        with self.sched.atomic(), self.store.engine.begin() as conn:
            try:
                ctx.fence(conn)
            except NotMaster:
                self.checks.fenced(worker, ctx, accepted=False)
                return
            conn.execute(WRITES.insert().values(lock_name=ctx.lock_name, epoch=ctx.epoch))
            self.checks.fenced(worker, ctx, accepted=True)

    # -- the database ------------------------------------------------------------------
    def db_call(
        self,
        owner: str,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        faulty: bool,
    ) -> Any:
        sched, f = self.sched, self.faults
        sched.point(f"db {name}")
        self.calls[name] += 1
        self.checks.calling(owner, name, args)
        rng = sched.rng
        if f.down(sched.time):
            raise db_error("could not connect to server: the database is down")
        if (
            faulty
            and name in ("tick", "acquire", "release", "ensure_rows")
            and rng.random() < f.fail
        ):
            self.checks.fault("fail", owner, name)
            raise db_error("statement failed")
        if faulty and self._behind_a_fence(name, args) and rng.random() < f.takeover_wait:
            self.checks.fault("takeover-wait", owner, name, frozenset(args[2]))
            sched.block(
                "takeover waits on a fence", until=sched.time + self.settings.heartbeat_interval
            )
            raise db_error("canceling statement due to statement timeout")
        with sched.atomic():
            result = fn(*args, **kwargs)
        if name == "tick":
            self.ticks_seen += 1
            self.rows_read += len(result.leases) + len(result.renewed) + len(result.members or ())
        self.checks.observed(owner, name, args, kwargs, result)
        if faulty and name in ("tick", "acquire", "release") and rng.random() < f.lost:
            self.checks.fault("lost-reply", owner, name)
            raise db_error("server closed the connection unexpectedly")
        sched.point(f"db {name} done")
        return result

    def _behind_a_fence(self, name: str, args: tuple[Any, ...]) -> bool:
        """A takeover waits only on a fence that a running job of a live holder may hold."""
        if name != "acquire" or not args[2]:
            return False
        with self.sched.atomic():
            leases = self.store.read(list(args[2]))
        running = {
            (str(w.holder), t.lock, t.epoch)
            for w in self.live()
            for t in self.checks.terms.values()
            if t.owner == w.owner and t.open
        }
        return any((lease.holder, n, lease.epoch) in running for n, lease in leases.items())

    # -- hints ---------------------------------------------------------------------------
    def broadcast(self, sender: SimWorker, names: list[str]) -> None:
        """A hint reaches each other live worker late, twice, or never, as the run draws."""
        rng = self.sched.rng
        for worker in self.live():
            if worker is sender or rng.random() < self.hint_drop:
                continue
            copies = 2 if rng.random() < self.hint_twice else 1
            for _ in range(copies):
                delay = rng.uniform(*self.hint_delay)
                self.sched.at(self.sched.time + delay, self._deliver(worker, list(names)))

    def _deliver(self, worker: SimWorker, names: list[str]) -> Callable[[], None]:
        def deliver() -> None:
            if worker.alive:
                worker.elector.wake(names)

        return deliver
