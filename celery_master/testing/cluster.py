"""In-process workers of one app and their lease database: what the fixtures hand a test."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery

from ..settings import resolve_job_settings
from ..store.engine import create_lease_engine
from ..store.leases import Lease, LeaseStore
from ..worker.registry import jobs_of
from .faults import Partition, database_outage

__all__ = ["FAST_TIMING", "STALL", "MasterCluster", "MasterWorker", "wait_until"]

#: a free lease is taken within a check interval (0.2 s); ttl 1.5 s: a master renews every
#: 0.5 s and stops its job after 1 s without a renewal, slack enough for a loaded CI machine
FAST_TIMING: dict[str, float | int] = {
    "init_delay": 0.05,
    "check_interval": 0.2,
    "heartbeat_interval": 0.5,
    "max_heartbeat_retry_count": 2,
}
#: room for one stall of a loaded test machine, on top of every bound derived from the timing
STALL = 1.0

T = TypeVar("T")


def wait_until(cond: Callable[[], T | None], timeout: float, what: str, step: float = 0.02) -> T:
    """Poll ``cond`` until it returns something truthy; fail naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(step)


class MasterWorker:
    """One in-process worker: a real Celery ``WorkController`` running in a thread."""

    def __init__(self, name: str, controller: Any, exit_stack: contextlib.ExitStack) -> None:
        self.name = name
        self.controller = controller
        self.running = True
        self._exit = exit_stack
        self._partition: Partition | None = None

    @property
    def partition(self) -> Partition:
        """This worker's connection to the lease database, to cut (``MasterCluster.partition``)."""
        if self._partition is None:
            self._partition = Partition(self.controller.master_elector.store.engine)
        return self._partition

    @property
    def hostname(self) -> str:
        return str(self.controller.hostname)

    def roles(self) -> dict[str, str]:
        """This worker's own view, per lock name: ``master``, ``standby`` or ``disabled``."""
        elector = getattr(self.controller, "master_elector", None)
        if elector is None or not self.running:
            return {}
        return {name: view["role"] for name, view in elector.snapshot().items()}

    def is_master(self, lock_name: str) -> bool:
        """True while this worker runs the lock's master job (its ``start`` was called)."""
        return self.roles().get(lock_name) == "master"

    def __repr__(self) -> str:
        return f"<MasterWorker {self.hostname} {'running' if self.running else 'stopped'}>"


class MasterCluster:
    """In-process workers of one app, and the lease database they share."""

    def __init__(self, app: Celery, database_url: str) -> None:
        self.app = app
        self.database_url = database_url
        self.workers: dict[str, MasterWorker] = {}
        self._store: LeaseStore | None = None

    @property
    def store(self) -> LeaseStore:
        """The lease database, as the ``celery master`` CLI sees it."""
        if self._store is None:
            self._store = LeaseStore(create_lease_engine(self.database_url, timeout=5.0))
            self._store.ensure_schema()
        return self._store

    @property
    def beat_lock_name(self) -> str:
        """The HA beat's lock name, as the running workers run it.

        Read from the workers rather than computed, so it is whatever
        ``master_beat_lock_name`` or its default makes it for this app.
        """
        registered = {job.lock_name for job in jobs_of(self.app)}
        names = {name for w in self.running() for name in w.roles()} - registered
        if len(names) != 1:
            raise LookupError(
                f"no single HA beat lock among the running workers' locks ({sorted(names)}): "
                "start workers with start_worker(master_beat=True)"
            )
        return names.pop()

    def bound(self) -> float:
        """Seconds within which an election must finish: the slowest job's crash failover.

        init delay + ttl + two check intervals + a heartbeat, plus one stall.
        """
        timings = [resolve_job_settings(self.app.conf, job.options) for job in jobs_of(self.app)]
        timings.append(resolve_job_settings(self.app.conf, {}))
        return STALL + max(
            s.init_delay + s.ttl + 2 * s.check_interval + s.heartbeat_interval for s in timings
        )

    # -- workers ---------------------------------------------------------------
    def start_worker(self, name: str | None = None, **options: Any) -> MasterWorker:
        """Start a worker named ``<name>@testing``; returns once it is ready.

        ``options`` go to ``start_worker`` (e.g. ``master_beat=True``).
        """
        from celery.contrib.testing.worker import start_worker

        name = name or f"w{len(self.workers) + 1}"
        if name in self.workers:
            raise ValueError(f"a worker named {name!r} was started already")
        stack = contextlib.ExitStack()
        controller = stack.enter_context(
            start_worker(
                self.app,
                pool="solo",
                perform_ping_check=False,
                hostname=f"{name}@testing",
                shutdown_timeout=self.bound() + 10,
                **options,
            )
        )
        worker = MasterWorker(name, controller, stack)
        self.workers[name] = worker
        return worker

    def stop_worker(self, worker: MasterWorker | str) -> None:
        """Warm shutdown of one worker, as SIGTERM does: its step stops the jobs, frees the leases.

        Celery's ``start_worker`` stops a worker through a process-wide flag,
        which would stop every in-process worker at once; this stops only
        ``worker``, and lets ``start_worker`` clean up at ``close()``.
        """
        worker = self.workers[worker] if isinstance(worker, str) else worker
        if worker.running:
            worker.controller.stop(in_sighandler=False)
            worker.running = False

    def running(self) -> list[MasterWorker]:
        return [w for w in self.workers.values() if w.running]

    # -- faults ------------------------------------------------------------------------
    def crash(self, worker: MasterWorker | str) -> None:
        """As ``kill -9``: its jobs end at once, its leases are never released.

        Another worker takes a crashed master's lock over only once the ttl
        has passed, as in production.
        """
        worker = self.workers[worker] if isinstance(worker, str) else worker
        if not worker.running:
            return
        worker.partition.start(None)  # nothing it does reaches the database again
        elector = worker.controller.master_elector
        elector.abandon()
        for lk in elector.locks.values():
            elector.terms.step_down(lk, "the worker crashed (test)")
        self.stop_worker(worker)

    def partition(self, worker: MasterWorker | str, seconds: float | None = None) -> None:
        """Cut one worker off the lease database (for ``seconds``, or until ``heal``).

        Its renewals fail; its job keeps running until the self-stop deadline
        (heartbeat x retries after its last renewal was sent), then
        ``ctx.is_master()`` is false and ``stop()`` is called.
        """
        worker = self.workers[worker] if isinstance(worker, str) else worker
        worker.partition.start(seconds)

    def heal(self, worker: MasterWorker | str) -> None:
        worker = self.workers[worker] if isinstance(worker, str) else worker
        worker.partition.heal()

    def database_outage(self) -> contextlib.AbstractContextManager[None]:
        """``with cluster.database_outage(): ...``: the SQLite lease file is unreachable."""
        return database_outage(self.database_url)

    # -- who is master -----------------------------------------------------------
    def master(self, lock_name: str) -> MasterWorker | None:
        """The running worker that runs the lock's job; two at once fail the test."""
        masters = [w for w in self.running() if w.is_master(lock_name)]
        assert len(masters) <= 1, f"two masters of {lock_name!r} at once: {masters}"
        return masters[0] if masters else None

    def wait_for_master(
        self,
        lock_name: str,
        timeout: float | None = None,
        other_than: MasterWorker | None = None,
    ) -> MasterWorker:
        """Wait until one running worker (not ``other_than``) runs the lock's job."""

        def elected() -> MasterWorker | None:
            worker = self.master(lock_name)
            return worker if worker is not None and worker is not other_than else None

        what = f"a master of {lock_name!r}" + (f" other than {other_than}" if other_than else "")
        return wait_until(elected, self.bound() if timeout is None else timeout, what)

    # -- what operators do ---------------------------------------------------------
    def release(self, lock_name: str, who: str = "pytest") -> bool:
        """Ask the master to step down, as ``celery master release`` does (SQL, then a hint)."""
        requested, _ = self.store.request_release(lock_name, who)
        self._wake(lock_name)
        return requested

    def disable(self, lock_name: str, reason: str | None = None, who: str = "pytest") -> None:
        self.store.set_enabled(lock_name, False, who, reason)
        self._wake(lock_name)

    def enable(self, lock_name: str, who: str = "pytest") -> None:
        self.store.set_enabled(lock_name, True, who, None)
        self._wake(lock_name)

    def hand_over(self, lock_name: str, timeout: float | None = None) -> MasterWorker:
        """Release the lock on its master; return the other worker that takes it over."""
        old = self.wait_for_master(lock_name, timeout)
        self.release(lock_name)
        return self.wait_for_master(lock_name, timeout, other_than=old)

    def fail_over(self, lock_name: str, timeout: float | None = None) -> MasterWorker:
        """Stop the master's worker; return the worker that takes the lock over."""
        old = self.wait_for_master(lock_name, timeout)
        self.stop_worker(old)
        return self.wait_for_master(lock_name, timeout, other_than=old)

    def _wake(self, lock_name: str) -> None:
        """The hint a broadcast would carry, delivered to every in-process elector."""
        for worker in self.running():
            elector = getattr(worker.controller, "master_elector", None)
            if elector is not None:
                elector.wake([lock_name])

    # -- what the database says ----------------------------------------------------
    def lease(self, lock_name: str) -> Lease | None:
        return self.store.read([lock_name]).get(lock_name)

    def history(self, lock_name: str, limit: int = 50) -> list[dict[str, object]]:
        """The lock's history rows, newest first (``event``, ``holder``, ``epoch``, ``at``...)."""
        return self.store.history(lock_name, limit)

    def close(self) -> None:
        for worker in self.running():
            self.stop_worker(worker)
        for worker in reversed(list(self.workers.values())):
            worker._exit.close()
        if self._store is not None:
            self._store.engine.dispose()
