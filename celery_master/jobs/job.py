"""What a user registers (MasterJob) and what the job is handed (MasterContext)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import clock as _clock
from ..errors import ConfigurationError, NotMaster
from ..runtime import REAL, EventLike, Runtime
from ..settings import TIMING_NAMES, resolve_job_settings
from ..store.schema import MAX_LOCK_NAME

__all__ = ["MAX_WEIGHT", "MasterContext", "MasterJob", "validate_lock_name"]

#: a worker's load (the sum of the weights it holds) lives in a 32-bit integer column: this
#: bound keeps the sum of 2,000 lock names of the largest weight inside it
MAX_WEIGHT = 1_000_000

JobCallable = Callable[["MasterContext"], Any]


def validate_lock_name(lock_name: object) -> str:
    """Lock names are data: any printable text, never empty, at most 200 characters."""
    if not isinstance(lock_name, str):
        raise ConfigurationError(f"lock name must be a string, got {type(lock_name).__name__}")
    if not lock_name.strip():
        raise ConfigurationError("lock name must not be empty, e.g. 'JOB-SCHEDULER'")
    if lock_name != lock_name.strip() or not lock_name.isprintable():
        raise ConfigurationError(
            f"lock name {lock_name!r} has leading/trailing spaces or control characters: "
            "use printable text"
        )
    if len(lock_name) > MAX_LOCK_NAME:
        raise ConfigurationError(
            f"lock name {lock_name[:40]!r}... is {len(lock_name)} characters long: "
            f"use at most {MAX_LOCK_NAME}"
        )
    return lock_name


@dataclass(frozen=True)
class MasterJob:
    """One lock name and the callables that run on its master."""

    lock_name: str
    start: JobCallable
    stop: JobCallable | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_lock_name(self.lock_name)
        if not callable(self.start):
            raise ConfigurationError(
                f"start for {self.lock_name!r} must be callable, got {self.start!r}"
            )
        if self.stop is not None and not callable(self.stop):
            raise ConfigurationError(
                f"stop for {self.lock_name!r} must be callable or None, got {self.stop!r}"
            )
        if "database_url" in self.options:
            raise ConfigurationError(
                f"option database_url for {self.lock_name!r}: the lease database is one per "
                "app; set app.conf.master_database_url instead"
            )
        unknown = sorted(set(self.options) - set(TIMING_NAMES) - {"weight", "prefer"})
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {', '.join(unknown)} for {self.lock_name!r}: "
                f"allowed are {', '.join((*TIMING_NAMES, 'weight', 'prefer'))}"
            )
        weight = self.options.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            raise ConfigurationError(
                f"option weight={weight!r} for {self.lock_name!r} must be an integer from 1 to "
                f"{MAX_WEIGHT:,}: weights are relative, and the load a worker holds (the sum of "
                "its weights) is stored in a 32-bit integer column"
            )
        prefer = self.options.get("prefer")
        if prefer is not None and (not isinstance(prefer, str) or not prefer.strip()):
            raise ConfigurationError(
                f"option prefer={prefer!r} for {self.lock_name!r} must be a node-name glob, "
                "e.g. 'beat@*'"
            )
        resolve_job_settings({}, self.options, environ={})  # validates the values given


class MasterContext:
    """Handed to ``start(ctx)`` and ``stop(ctx)``; valid for one term as master.

    ``is_master()`` does no I/O: it is true only while the lease is surely
    still held, judged on this process's monotonic clock from when the last
    successful renewal was *sent*. A process paused past its lease therefore
    sees False the moment it wakes, before anyone tells it.
    """

    def __init__(
        self,
        lock_name: str,
        epoch: int,
        holder: str,
        deadline: float,
        fence: Callable[[Any, MasterContext], bool] | None = None,
        clock: Callable[[], float] = _clock.now,
        runtime: Runtime = REAL,
    ) -> None:
        self.lock_name = lock_name
        self.epoch = epoch
        self.holder = holder
        #: set when the term ends; ``start`` may block on ``ctx.stopping.wait(...)``
        self.stopping: EventLike = runtime.event()
        self._deadline = deadline
        self._revoked = False
        self._fence = fence
        self._clock = clock
        self.progress: tuple[float, float | None] | None = None  # (clock instant, within)
        self.error: str | None = None

    def alive(self, within: float | None = None) -> None:
        """Report progress: the job is doing its work, not merely holding the lease.

        ``within`` (seconds) is how soon the next report is due; ``celery master
        status --check`` calls a master unhealthy once a report is that late.
        No I/O: the next renewal carries it to the lease row.
        """
        if within is not None and (not isinstance(within, (int, float)) or within <= 0):
            raise ConfigurationError(f"ctx.alive(within={within!r}): within must be > 0 seconds")
        self.progress = (self._clock(), None if within is None else float(within))

    def report_error(self, message: str | None) -> None:
        """Show a problem the job is riding out (e.g. its database blipped) in ``master_status``.

        ``None`` clears it. The job keeps its term: this is for operators, not the election.
        """
        self.error = None if message is None else str(message)[:500]

    def is_master(self) -> bool:
        return not self._revoked and self._clock() < self._deadline

    @property
    def deadline(self) -> float:
        """Monotonic instant at which this term ends unless renewed."""
        return self._deadline

    def extend(self, deadline: float) -> None:
        if deadline > self._deadline:
            self._deadline = deadline

    def revoke(self) -> None:
        self._revoked = True
        self.stopping.set()

    def fence(self, connection: Any) -> None:
        """Raise NotMaster unless this term is still current, inside ``connection``'s transaction.

        Call it in the transaction that makes your own write; on PostgreSQL a
        takeover waits until that transaction ends, so a write that passed the
        fence commits before the next master starts.
        """
        if not self.is_master():
            raise NotMaster(self.lock_name, self.epoch, "this worker's term has ended")
        if self._fence is None:
            raise NotMaster(self.lock_name, self.epoch, "no lease store to fence against")
        if not self._fence(connection, self):
            raise NotMaster(self.lock_name, self.epoch, "a newer epoch holds the lease")

    def __repr__(self) -> str:
        state = "master" if self.is_master() else "ended"
        return f"<MasterContext {self.lock_name!r} epoch={self.epoch} {state}>"
