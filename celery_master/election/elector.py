"""The election loop: one thread per worker process, one round trip per tick for all lock names.

When any lock name is due (a renewal, a look at a standby's lease, a silent
holder's ttl running out, membership), every name is served in one
transaction: renew every held name, take the names a hint announced free,
read every wanted name, refresh membership when due. Renewing early is safe
(the master's deadline counts from when its last renewal was *sent*) and
reading early costs nothing, so per-name timers never drift apart. See
lockstate.py for the takeover rules, terms.py for starting and ending terms,
spread.py for who tries first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ..errors import ConfigurationError
from ..health import MAX_BACKOFF, DatabaseHealth
from ..holder import Holder
from ..jobs.job import MasterJob
from ..runtime import REAL, Runtime, TaskLike
from ..settings import JobSettings
from ..store.leases import LeaseStore
from ..store.setup import SchemaError
from .lockstate import LockState, Role
from .round import Round, RoundParts
from .spread import Spread
from .terms import Terms
from .watchdog import Watchdog

__all__ = ["Elector", "Role"]

logger = logging.getLogger(__name__)


class Elector:
    """Owns the elector and watchdog threads; ``stop()`` hands every lease over."""

    def __init__(
        self,
        store: LeaseStore,
        jobs: Iterable[tuple[MasterJob, JobSettings]],
        holder: Holder,
        notify: Callable[[list[str]], None] | None = None,
        clock: Callable[[], float] | None = None,
        on_role_change: Callable[[str, Role, int, str], None] | None = None,
        on_tick: Callable[[float, bool], None] | None = None,
        app_name: str = "",
        on_setup: Callable[[LeaseStore], None] | None = None,
        runtime: Runtime = REAL,
    ) -> None:
        self.store = store
        self.holder = holder
        self.holder_id = str(holder)
        self.runtime = runtime
        self.clock = clock = clock or runtime.now
        self.on_setup = on_setup
        self.locks = {job.lock_name: LockState(job, settings) for job, settings in jobs}
        if not self.locks:
            raise ConfigurationError("an elector needs at least one registered master job")
        timings = [lk.settings for lk in self.locks.values()]
        self.init_delay = min(s.init_delay for s in timings)
        self.tick_period = min(min(s.heartbeat_interval, s.check_interval) for s in timings)
        self._wake = runtime.event()
        self._leaving = runtime.event()
        self._gone = runtime.event()
        self._thread: TaskLike | None = None
        #: what keeps this worker out of the election (an unusable schema, an unreadable
        #: state) or broke its last round; shown in master_status, logged once per change
        self.error: str | None = None
        self.health = DatabaseHealth(store.engine.url, self.tick_period)
        self.terms = Terms(
            store,
            holder,
            clock,
            self._wake.set,
            notify,
            on_role_change,
            {n: lk.settings for n, lk in self.locks.items()},
            runtime,
        )
        weights = {n: lk.weight for n, lk in self.locks.items()}
        self.spread = Spread(self.holder_id, holder.node_name, app_name, weights)
        parts = RoundParts(
            self.locks,
            store,
            self.terms,
            self.spread,
            self.health,
            holder,
            clock,
            self.tick_period,
        )
        self.round = Round(parts, on_tick, runtime)
        self.watchdog = Watchdog(
            self.locks.values, self.terms.step_down, clock, self.tick_period, runtime
        )

    # -- public ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = self.runtime.spawn(self._run, "celery-master-elector")
        self.watchdog.start()

    def wake(self, lock_names: Iterable[str] | None = None) -> None:
        """A hint (broadcast or local): serve these lock names now, in one round trip."""
        names = self.locks if lock_names is None else [n for n in lock_names if n in self.locks]
        self.round.hint(names)
        self._wake.set()

    def begin_handover(self) -> None:
        """Stop every job and free every lease; called at SIGTERM, before Celery's own stop."""
        self._leaving.set()
        self._wake.set()

    def abandon(self) -> None:
        """Stop electing at once and release nothing, as a process that dies would.

        The test plugin's ``crash`` uses it: the leases stay held until they
        run out, and another worker takes over only after the ttl.
        """
        self._gone.set()
        self._wake.set()
        self.watchdog.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Hand over and wait (bounded) for the leases to be freed."""
        self.begin_handover()
        if timeout is None:
            timeout = 2 * max(lk.settings.heartbeat_interval for lk in self.locks.values()) + 2
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("hand-over did not finish within %.1fs", timeout)
        self.watchdog.stop()

    def roles(self) -> dict[str, Role]:
        return {name: lk.role for name, lk in self.locks.items()}

    def snapshot(self) -> dict[str, Any]:
        """Each lock name's role as this worker sees it; no I/O (runs on Celery's loop)."""
        out: dict[str, Any] = {}
        now = self.clock()
        for name, lk in self.locks.items():
            ctx = lk.runner.ctx if lk.runner else None
            out[name] = {
                "role": lk.role.value,
                "epoch": ctx.epoch if ctx else None,
                "holder": self.holder.node_name if ctx else Holder.node_of(lk.holder_seen),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lk.since)),
                "lease_left": round(max(0.0, ctx.deadline - now), 3) if ctx else None,
                "last_error": self.error or lk.last_error or self.health.error,
                "job_error": ctx.error if ctx else None,
            }
        return out

    def describe_database(self) -> str:
        return self.health.url

    # -- the thread --------------------------------------------------------------
    def _run(self) -> None:
        if self._leaving.wait(self.init_delay) or not self._setup():
            return
        while not self._gone.is_set():
            self._wake.clear()
            try:
                if self._leaving.is_set():
                    if self._handover():
                        return
                    wait = self.health.backoff
                else:
                    wait = self.round.run() - self.clock()
                    self.error = None
            except SQLAlchemyError as exc:  # never past a renewal's due time
                self.health.failed(exc)
                now = self.clock()
                wait = min(self.health.backoff, self.round.renewal_due(now) - now)
            except Exception as exc:  # a bug or a state we cannot read: say it, keep electing
                self._report(f"unexpected error in the election loop ({exc!r}); going on", exc)
                wait = self.health.backoff * 2
            self._wake.wait(max(0.0, wait))

    def _setup(self) -> bool:
        """Tables and rows, retried while the database is down or its schema keeps this worker
        out; False: out for good (a schema newer than this code) or leaving. Never raises."""
        while not self._leaving.is_set():
            try:
                self.store.ensure_schema()
                self.store.ensure_rows(self.locks)
                if self.on_setup is not None:
                    self.on_setup(self.store)
            except SQLAlchemyError as exc:
                self.health.failed(exc)
                self._leaving.wait(self.health.backoff)
            except Exception as exc:  # SchemaError, or a database state we cannot read
                why = str(exc) if isinstance(exc, SchemaError) else f"unreadable state: {exc!r}"
                self._report(f"{why}; this worker stays out of the election", exc)
                if isinstance(exc, SchemaError) and not exc.fixed_in_database:
                    return False
                self._leaving.wait(MAX_BACKOFF)  # it may be fixed in the database: look again
            else:
                self.health.ok()
                if self.error is not None:
                    logger.warning("the lease schema is usable now: this worker joins the election")
                self.error = None
                return True
        return False

    def _report(self, message: str, exc: Exception) -> None:
        """One ERROR per change of what is wrong (a traceback only for what is not ours)."""
        if message != self.error:
            logger.error(message, exc_info=not isinstance(exc, SchemaError))
        self.error = message

    def _handover(self) -> bool:
        """Step down everywhere and free the leases; True once nothing is held."""
        self.round.collect_takeover(leaving=True)
        for lk in self.locks.values():
            if lk.runner is not None:
                self.terms.step_down(lk, "worker shutting down")
        self.terms.free_stopped(list(self.locks.values()))
        if self.round.takeovers.pending or any(
            lk.runner or lk.epoch is not None for lk in self.locks.values()
        ):
            return False
        try:
            self.store.leave_member(self.holder_id)
        except SQLAlchemyError as exc:
            self.health.failed(exc)
        return True
