"""A Celery app whose master job journals start, stop and ticks, for the process tests.

Configured from the environment so each test can point it at its own broker,
lease database and journal: JOURNAL_BROKER_URL, JOURNAL_FS_DIR (filesystem
broker folder), CELERY_MASTER_DATABASE_URL, JOURNAL_FILE, JOURNAL_LOCKS.
Heterogeneous clusters (the chaos soak): JOURNAL_APP_NAME (the app identity),
JOURNAL_WEIGHTS and JOURNAL_PREFER (``LOCK:value,...`` register options),
JOURNAL_BEAT_SLOTS=1 (beat sends on wall-clock slots of JOURNAL_BEAT_PERIOD,
each send journaled with its slot), JOURNAL_FENCE_HOLD (seconds, at most, a
fenced transaction stays open), JOURNAL_CLOCK_BASE (journal instants are
CLOCK_MONOTONIC + this base, so a worker whose wall clock is stepped by
libfaketime still journals on the one timeline of the host; such a worker
also journals its wall clock twice a second, the evidence that it moved).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from typing import Any

import sqlalchemy as sa
from celery import Celery, schedules, signals

import celery_master

APP_NAME = os.environ.get("JOURNAL_APP_NAME", "journal_app")
app = Celery(APP_NAME)
if "JOURNAL_APP_NAME" in os.environ:
    app.conf.master_app_name = APP_NAME
_fs = os.environ.get("JOURNAL_FS_DIR")
if _fs:
    for sub in ("in", "processed"):
        os.makedirs(os.path.join(_fs, sub), exist_ok=True)
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport = "celery_master.transport:FilesystemTransport"
    app.conf.broker_transport_options = {
        "data_folder_in": os.path.join(_fs, "in"),
        "data_folder_out": os.path.join(_fs, "in"),
        "processed_folder": os.path.join(_fs, "processed"),
        "control_folder": os.path.join(_fs, "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
else:
    app.conf.broker_url = os.environ.get("JOURNAL_BROKER_URL", "memory://")
app.conf.worker_hijack_root_logger = False
# kombu's DEBUG line for every broadcast a worker receives: the tests read from a worker's
# own log when a hint or a command reached it (tests/support/handover.py)
logging.getLogger("kombu.pidbox").setLevel(logging.DEBUG)
app.conf.broker_connection_retry_on_startup = True

JOURNAL = os.environ.get("JOURNAL_FILE", "journal.jsonl")
TICK = float(os.environ.get("JOURNAL_TICK", "0.1"))
_BASE = os.environ.get("JOURNAL_CLOCK_BASE")
FENCE_HOLD = float(os.environ.get("JOURNAL_FENCE_HOLD", "0"))


def now() -> float:
    """The journal's clock: wall time, or the host's monotonic clock on a shared base."""
    return time.monotonic() + float(_BASE) if _BASE else time.time()


def _per_lock(variable: str) -> dict[str, str]:
    """``LOCK:value,LOCK2:value`` from the environment."""
    pairs = (item.split(":", 1) for item in os.environ.get(variable, "").split(",") if item)
    return {lock: value for lock, value in pairs}


def journal(event: str, ctx: celery_master.MasterContext, **extra: object) -> None:
    line = {
        "event": event,
        "t": now(),
        "pid": os.getpid(),
        "lock": ctx.lock_name,
        "epoch": ctx.epoch,
        "holder": ctx.holder,
        **extra,
    }
    with open(JOURNAL, "a") as fh:
        fh.write(json.dumps(line) + "\n")


FENCED = os.environ.get("JOURNAL_FENCED") == "1"
_engine = None
FENCED_TICKS = sa.table(
    "journal_fenced_tick",
    sa.column("lock_name"),
    sa.column("epoch"),
    sa.column("holder"),
    sa.column("at"),
)


def fenced_tick(ctx: celery_master.MasterContext) -> None:
    """A write of the job's own, made conditional on the epoch through ctx.fence."""
    global _engine
    if _engine is None:
        url = os.environ["CELERY_MASTER_DATABASE_URL"]
        bounded = (
            {"options": "-c statement_timeout=500 -c lock_timeout=500", "connect_timeout": 2}
            if url.startswith("postgresql")
            else {"timeout": 0.5}
        )
        _engine = sa.create_engine(url, pool_size=1, connect_args=bounded)
        with _engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE IF NOT EXISTS journal_fenced_tick (lock_name VARCHAR(200), "
                    "epoch BIGINT, holder VARCHAR(255), at FLOAT)"
                )
            )
    try:
        with _engine.begin() as conn:
            ctx.fence(conn)
            if FENCE_HOLD:  # a fenced transaction a takeover may have to wait for
                time.sleep(random.uniform(0, FENCE_HOLD))
            conn.execute(
                FENCED_TICKS.insert().values(
                    lock_name=ctx.lock_name, epoch=ctx.epoch, holder=ctx.holder, at=now()
                )
            )
    except celery_master.NotMaster as exc:  # why: the soak tells a stale term from a fault
        journal("fence-refused", ctx, why=str(exc))
    except sa.exc.SQLAlchemyError as exc:
        journal("fence-error", ctx, error=type(exc).__name__)


def journal_clock() -> None:
    """Twice a second, this process's wall clock against the journal's: a stepped clock shows."""
    while True:
        line = {"event": "clock", "t": now(), "pid": os.getpid(), "wall": time.time()}
        with open(JOURNAL, "a") as fh:
            fh.write(json.dumps(line) + "\n")
        time.sleep(0.5)


@signals.worker_ready.connect
def watch_clock(**kwargs: object) -> None:
    """Only in a worker whose wall clock libfaketime may step, journaling on a shared base."""
    if _BASE and os.environ.get("FAKETIME_TIMESTAMP_FILE"):
        threading.Thread(target=journal_clock, name="journal-clock", daemon=True).start()


def start(ctx: celery_master.MasterContext) -> None:
    journal("start", ctx)
    while not ctx.stopping.wait(TICK):
        t = now()  # read before the check: a True answer then proves t was in-term
        journal("tick", ctx, is_master=ctx.is_master(), at=t)
        if FENCED:
            fenced_tick(ctx)


def stop(ctx: celery_master.MasterContext) -> None:
    journal("stop", ctx, is_master=ctx.is_master())
    if FENCED:
        stale_write(ctx)


def stale_write(ctx: celery_master.MasterContext) -> None:
    """A write from a term that has ended, as a job that missed the end of its term makes
    one: the fence must refuse it, before any I/O (the soak counts every refusal)."""
    try:
        ctx.fence(None)
    except celery_master.NotMaster as exc:
        journal("fence-refused", ctx, why=str(exc))
    else:
        journal("fence-passed-after-term", ctx)


_weights, _prefer = _per_lock("JOURNAL_WEIGHTS"), _per_lock("JOURNAL_PREFER")
for _name in filter(None, os.environ.get("JOURNAL_LOCKS", "JOB-SCHEDULER").split(",")):
    _options: dict[str, Any] = {}
    if _name in _weights:
        _options["weight"] = int(_weights[_name])
    if _name in _prefer:
        _options["prefer"] = _prefer[_name]
    celery_master.register(app, _name, start, stop, **_options)

celery_master.install(app)  # --master-beat works even with JOURNAL_LOCKS empty
_slot = threading.local()


class SlotSchedule(schedules.schedule):
    """Due once per wall-clock slot ``[n x period, (n + 1) x period)``: sends are countable.

    Celery's interval schedule runs ``period`` after the last run, so its sends
    drift and cannot be matched to slots; here each send is slot ``n``, and a
    slot sent twice is a duplicate whatever the delay.
    """

    def is_due(self, last_run_at: Any) -> schedules.schedstate:
        period = self.run_every.total_seconds()
        wall = self.now().timestamp()
        current = math.floor(wall / period)
        if current > math.floor(self.maybe_make_aware(last_run_at).timestamp() / period):
            _slot.value = current  # read by journal_send in this same (beat) thread
            return schedules.schedstate(True, (current + 1) * period - wall)
        return schedules.schedstate(False, (current + 1) * period - wall)


_period = float(os.environ.get("JOURNAL_BEAT_PERIOD", "1.0"))
app.conf.beat_schedule = {
    "beat-tick": {
        "task": "tests.apps.journal_app.beat_tick",
        "schedule": SlotSchedule(_period) if os.environ.get("JOURNAL_BEAT_SLOTS") else _period,
    },
}


def journal_beat(event: str, headers: dict | None) -> None:
    headers = headers or {}
    line = {
        "event": event,
        "t": now(),
        "pid": os.getpid(),
        "lock": "celery-beat",
        "app": APP_NAME,
        "epoch": headers.get("celery_master_epoch"),
        "slot": getattr(_slot, "value", None),
        "id": headers.get("id"),
    }
    with open(JOURNAL, "a") as fh:
        fh.write(json.dumps(line) + "\n")


@signals.before_task_publish.connect
def journal_send(sender: str | None = None, headers: dict | None = None, **kwargs: object) -> None:
    """Every beat send, as the sending process saw it: the duplicate/gap evidence."""
    if sender == "tests.apps.journal_app.beat_tick":
        journal_beat("send", headers)


@signals.after_task_publish.connect
def journal_published(
    sender: str | None = None, headers: dict | None = None, **kwargs: object
) -> None:
    """A beat send the broker accepted (a "send" may be an attempt that failed)."""
    if sender == "tests.apps.journal_app.beat_tick":
        journal_beat("published", headers)


@app.task
def beat_tick() -> None:
    return None


@app.task
def ping() -> str:
    return "pong"
