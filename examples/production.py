"""Production shape: PostgreSQL leases, Redis broker, HA beat + one master job (docker-compose.yml).

Run: DATABASE_URL=postgresql+psycopg2://... REDIS_URL=redis://... celery -A examples.production
worker -n w1@%h on any number of hosts; exactly one of them runs beat and the feed poller.
"""

from __future__ import annotations

import logging
import os

from celery import Celery

import celery_master

log = logging.getLogger("examples.production")

app = Celery("production")
app.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
    master_database_url=os.environ.get(
        "DATABASE_URL", "postgresql+psycopg2://celery:celery@localhost:5432/celery"
    ),
    master_beat=True,  # celery beat runs on the elected master only (lock "celery-beat")
    beat_schedule={
        "report-every-10s": {"task": "examples.production.report", "schedule": 10.0},
    },
)


def poll_feed(ctx: celery_master.MasterContext) -> None:
    """One poller in the whole cluster; its epoch goes into every task it sends."""
    while not ctx.stopping.wait(5.0):
        if ctx.is_master():
            ingest.apply_async(kwargs={"epoch": ctx.epoch})


celery_master.register(app, "FEED-POLLER", poll_feed)


@app.task
def report() -> str:
    log.info("periodic report")
    return "ok"


@app.task
def ingest(epoch: int) -> int:
    return epoch
