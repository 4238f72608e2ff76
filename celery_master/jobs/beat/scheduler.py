"""A Celery ``Scheduler`` whose state (last run per entry) lives in the lease database.

Celery's own seam (``setup_schedule``, ``reserve``, ``apply_entry``) as
django-celery-beat uses it. What changes, and why:

* ``reserve`` writes the next run, fenced by the epoch, *before* the task is
  sent: a stale master cannot write, so it cannot send; a new master never
  sends a reserved slot again (at most once per slot).
* A database fault during a reservation keeps the slot (not advanced) and is
  retried with backoff: beat rides out a blip shorter than the self-stop time,
  logged once per state change and shown through ``ctx.report_error``.
* A publish that fails after its reservation is retried, with the same task
  id, until the broker answers or the term ends; the term is re-checked right
  before every attempt. A slot whose message cannot be built (its arguments do
  not serialize, its task rejects them) is not retried: sending it again would
  fail again. It is reported (an ERROR naming the entry, ``job_error``) and
  counts as sent, as in Celery's own beat. Each message carries the headers
  ``celery_master_lock_name`` and ``celery_master_epoch`` for consumers to fence on.
* At set-up (each takeover) the slots missed during the gap follow the
  entry's misfire policy (``once`` or ``skip``) and the takeover is recorded
  in the history.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from celery.beat import BeatLazyFunc, ScheduleEntry, Scheduler
from celery.schedules import crontab, schedule
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import SQLAlchemyError

from ...errors import NotMaster
from ...store.beat import BeatState
from ..job import MasterContext

__all__ = ["HEADER_EPOCH", "HEADER_LOCK_NAME", "MasterScheduler", "slots_missed"]

logger = logging.getLogger(__name__)
HEADER_LOCK_NAME = "celery_master_lock_name"
HEADER_EPOCH = "celery_master_epoch"
RETRY_FIRST, RETRY_MAX = 0.1, 1.0  # seconds between retries of a fault we ride out
MAX_COUNTED = 10_000  # slots counted one by one at most (a crontab after a long outage)


def slots_missed(entry: ScheduleEntry, now: datetime) -> int:
    """How many slots of ``entry`` fell between its last run and ``now`` (0 if none is due)."""
    last, sched = entry.last_run_at, entry.schedule
    if isinstance(sched, schedule) and not isinstance(sched, crontab):
        period = sched.run_every.total_seconds()
        if period <= 0:
            return 0
        return max(0, int((now - sched.maybe_make_aware(last)).total_seconds() // period))
    if isinstance(sched, crontab):
        count, at = 0, last
        while count < MAX_COUNTED:
            at_aware, delta, _ = sched.remaining_delta(at)
            nxt = at_aware + delta
            if nxt > now or nxt <= at_aware:
                break
            count, at = count + 1, nxt
        return count
    return 1 if entry.is_due()[0] else 0  # other schedules: at least one, count unknown


class MasterScheduler(Scheduler):
    """Runs only inside a master term: every reservation is fenced by ``ctx``."""

    def __init__(
        self,
        *args: Any,
        ctx: MasterContext,
        state: BeatState,
        misfire: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.ctx = ctx
        self.state = state
        self.misfire = dict(misfire or {})
        self._failing: str | None = None  # what is failing now: logged once per change
        self._unsendable_entries: set[str] = set()  # entries whose last slot could not be built
        self._retry = RETRY_FIRST
        super().__init__(*args, **kwargs)

    # -- set-up: each takeover --------------------------------------------------
    def setup_schedule(self) -> None:
        """Load the stored state, apply misfire policies, reconcile and record the takeover.

        Any error here propagates: ``start()`` fails, and the runner logs it,
        backs off and retries, rather than running a beat without its state.
        """
        self.merge_inplace(self.app.conf.beat_schedule or {})
        self.install_default_entries(self.data)
        stored = self.state.load()
        now = self.app.now()
        missed: dict[str, tuple[int, str]] = {}
        for name, entry in self.data.items():
            row = stored.get(name)
            if row is None or row.last_run_at is None:
                continue
            entry.last_run_at = self._aware(row.last_run_at)
            entry.total_run_count = row.total_run_count
            count = slots_missed(entry, now)
            if count:
                policy = self.misfire.get(name, "once")
                missed[name] = (count, policy)
                if policy == "skip":  # next run is the next slot after now
                    entry.last_run_at = now
        unknown = sorted(set(self.misfire) - set(self.data))
        if unknown:
            logger.warning(
                "master_beat_misfire names entries not in beat_schedule: %s", ", ".join(unknown)
            )
        detail = "; ".join(f"{n}: {c} slot(s) missed, {p}" for n, (c, p) in sorted(missed.items()))
        self.state.reconcile(self.ctx, list(self.data), takeover=detail or "no slot missed")
        logger.info(
            "beat of %r: %d entries, %d with stored state (epoch %d)%s",
            self.state.lock_name,
            len(self.data),
            sum(1 for n in self.data if n in stored),
            self.ctx.epoch,
            f"; {detail}" if detail else "",
        )

    def _aware(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone(self.app.timezone)

    # -- one slot ----------------------------------------------------------------
    def reserve(self, entry: ScheduleEntry) -> ScheduleEntry:
        new_entry = next(entry)
        self.state.reserve(
            self.ctx, entry.name, new_entry.last_run_at.timestamp(), new_entry.total_run_count
        )
        self._recovered("lease database")
        self.schedule[entry.name] = new_entry
        return new_entry

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.ctx.is_master():
            return RETRY_MAX
        try:
            delay = float(super().tick(*args, **kwargs))
        except (NotMaster, SQLAlchemyError) as exc:
            self._heap = None  # Celery popped the due slot: rebuild, the slot was not advanced
            if not self.ctx.is_master():
                return RETRY_MAX  # the term is over; the elector stops this beat
            return self._failed("lease database", exc)
        return delay

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        """Publish a reserved slot: retried until the broker answers or the term ends."""
        task_id = str(uuid.uuid4())  # one id for every attempt: a consumer can drop a repeat
        while True:
            if not self.ctx.is_master():
                # a fault ended the term (a failover): at most once per slot, never twice
                logger.warning(
                    "beat of %r: slot of %r not sent, the term (epoch %d) ended before the "
                    "broker answered; the next master goes on from the next slot",
                    self.state.lock_name,
                    entry.name,
                    self.ctx.epoch,
                )
                return
            try:
                self.apply_async(entry, producer=self.producer, advance=False, task_id=task_id)
            except self._broker_errors() as exc:
                self._drop_producer()
                if self.ctx.stopping.wait(self._failed("broker", exc)):
                    continue  # the check above logs the lost slot
                self.ctx.alive(within=self.alive_within)
            except Exception as exc:  # the message itself cannot be built: not a fault to wait out
                self._unsendable(entry, exc)
                return
            else:
                self._recovered("broker")
                if entry.name in self._unsendable_entries:
                    self._unsendable_entries.discard(entry.name)
                    self.ctx.report_error(None)
                    logger.warning("beat of %r: %r is sent again", self.state.lock_name, entry.name)
                return

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Celery's send, plus the epoch headers and a fixed task id; errors are not wrapped."""
        entry = self.reserve(entry) if advance else entry
        options = dict(entry.options)
        headers = dict(options.get("headers") or {})
        headers.update(
            {
                "celery_beat_task": True,
                HEADER_LOCK_NAME: self.state.lock_name,
                HEADER_EPOCH: self.ctx.epoch,
            }
        )
        options["headers"] = headers
        if kwargs.get("task_id"):
            options["task_id"] = kwargs["task_id"]
        args = [v() if isinstance(v, BeatLazyFunc) else v for v in entry.args or ()]
        kw = {k: v() if isinstance(v, BeatLazyFunc) else v for k, v in (entry.kwargs or {}).items()}
        task = self.app.tasks.get(entry.task)
        if task is not None:
            return task.apply_async(args, kw, producer=producer, **options)
        return self.send_task(entry.task, args, kw, producer=producer, **options)

    def _unsendable(self, entry: ScheduleEntry, exc: Exception) -> None:
        """One slot lost to its own message: said once per entry until one is sent again."""
        if entry.name not in self._unsendable_entries:
            self._unsendable_entries.add(entry.name)
            logger.error(
                "beat of %r: slot of %r not sent and not retried: its message cannot be "
                "built (%s: %s); fix the entry's task, args or serializer",
                self.state.lock_name,
                entry.name,
                type(exc).__name__,
                exc,
            )
        self.ctx.report_error(f"beat: slot of {entry.name!r} not sent: {type(exc).__name__}")

    # -- faults we ride out -------------------------------------------------------
    alive_within = 5.0  # set by the job from its loop interval

    def _broker_errors(self) -> tuple[type[BaseException], ...]:
        conn = self.connection
        return (OSError, BrokerError, *conn.connection_errors, *conn.channel_errors)

    @cached_property
    def producer(self) -> Any:
        """Connects on first publish, bounded by the broker's connect timeout.

        Celery's own producer first waits for the broker with
        ``broker_connection_max_retries``: minutes in which the term is never re-checked.
        """
        return self.Producer(self.connection, auto_declare=False)

    def _drop_producer(self) -> None:
        """Forget the cached producer and connection: the next attempt connects anew."""
        self.__dict__.pop("producer", None)
        connection = self.__dict__.pop("connection", None)
        if connection is not None:
            try:
                connection.release()
            except Exception as exc:  # a dead connection may fail to close; it is gone anyway
                logger.debug("beat: closing a failed broker connection: %s", exc)

    def _failed(self, what: str, exc: BaseException) -> float:
        """Log the first failure of a run, show it in master_status; the delay to retry after."""
        message = f"{what} failing: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if self._failing != what:
            self._failing = what
            self._retry = RETRY_FIRST
            logger.warning(
                "beat of %r: %s; the slot is kept and retried with backoff",
                self.state.lock_name,
                message,
            )
        self.ctx.report_error(f"beat: {message}")
        delay, self._retry = self._retry, min(RETRY_MAX, self._retry * 2)
        return delay

    def _recovered(self, what: str) -> None:
        if self._failing == what:
            self._failing = None
            self._retry = RETRY_FIRST
            self.ctx.report_error(None)
            logger.warning("beat of %r: %s answers again", self.state.lock_name, what)

    def sync(self) -> None:
        """Nothing to flush: every reservation was written when it was made."""

    @property
    def info(self) -> str:
        return f"    . db -> celery-master lease database (lock {self.state.lock_name!r})"
