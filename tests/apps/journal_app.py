"""A Celery app whose master job journals start, stop and ticks, for the process tests.

Configured from the environment so each test can point it at its own broker,
lease database and journal: JOURNAL_BROKER_URL, JOURNAL_FS_DIR (filesystem
broker folder), CELERY_MASTER_DATABASE_URL, JOURNAL_FILE, JOURNAL_LOCKS.
"""

from __future__ import annotations

import json
import os
import time

import sqlalchemy as sa
from celery import Celery, signals

import celery_master

app = Celery("journal_app")
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
app.conf.broker_connection_retry_on_startup = True

JOURNAL = os.environ.get("JOURNAL_FILE", "journal.jsonl")
TICK = float(os.environ.get("JOURNAL_TICK", "0.1"))


def journal(event: str, ctx: celery_master.MasterContext, **extra: object) -> None:
    line = {
        "event": event,
        "t": time.time(),
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
            conn.execute(
                FENCED_TICKS.insert().values(
                    lock_name=ctx.lock_name, epoch=ctx.epoch, holder=ctx.holder, at=time.time()
                )
            )
    except celery_master.NotMaster:
        journal("fence-refused", ctx)
    except sa.exc.SQLAlchemyError as exc:
        journal("fence-error", ctx, error=type(exc).__name__)


def start(ctx: celery_master.MasterContext) -> None:
    journal("start", ctx)
    while not ctx.stopping.wait(TICK):
        t = time.time()  # read before the check: a True answer then proves t was in-term
        journal("tick", ctx, is_master=ctx.is_master(), at=t)
        if FENCED:
            fenced_tick(ctx)


def stop(ctx: celery_master.MasterContext) -> None:
    journal("stop", ctx, is_master=ctx.is_master())


for _name in filter(None, os.environ.get("JOURNAL_LOCKS", "JOB-SCHEDULER").split(",")):
    celery_master.register(app, _name, start, stop)

celery_master.install(app)  # --master-beat works even with JOURNAL_LOCKS empty
app.conf.beat_schedule = {
    "beat-tick": {
        "task": "tests.apps.journal_app.beat_tick",
        "schedule": float(os.environ.get("JOURNAL_BEAT_PERIOD", "1.0")),
    },
}


@signals.before_task_publish.connect
def journal_send(sender: str | None = None, headers: dict | None = None, **kwargs: object) -> None:
    """Every beat send, as the sending process saw it: the duplicate/gap evidence."""
    if sender != "tests.apps.journal_app.beat_tick":
        return
    line = {
        "event": "send",
        "t": time.time(),
        "pid": os.getpid(),
        "lock": "celery-beat",
        "epoch": (headers or {}).get("celery_master_epoch"),
        "id": (headers or {}).get("id"),
    }
    with open(JOURNAL, "a") as fh:
        fh.write(json.dumps(line) + "\n")


@signals.after_task_publish.connect
def journal_published(
    sender: str | None = None, headers: dict | None = None, **kwargs: object
) -> None:
    """A beat send the broker accepted (a "send" may be an attempt that failed)."""
    if sender != "tests.apps.journal_app.beat_tick":
        return
    line = {
        "event": "published",
        "t": time.time(),
        "pid": os.getpid(),
        "lock": "celery-beat",
        "epoch": (headers or {}).get("celery_master_epoch"),
        "id": (headers or {}).get("id"),
    }
    with open(JOURNAL, "a") as fh:
        fh.write(json.dumps(line) + "\n")


@app.task
def beat_tick() -> None:
    return None


@app.task
def ping() -> str:
    return "pong"
