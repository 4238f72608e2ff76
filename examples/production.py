"""Production shape: PostgreSQL leases, Redis broker, HA beat + one master job (docker-compose.yml).

Run on any number of hosts, configured the way Celery and celery-master read it
themselves: ``CELERY_BROKER_URL=redis://... CELERY_MASTER_DATABASE_URL=postgresql+psycopg2://...
celery -A examples.production worker -n w1@%h``. Exactly one worker runs beat
and exactly one runs the feed poller.
"""

from __future__ import annotations

import logging

from celery import Celery

import celery_master

log = logging.getLogger("examples.production")

app = Celery("production")
app.conf.update(
    master_beat=True,  # celery beat runs on the elected master only
    # named explicitly: a rolling upgrade from a version with another default never runs two beats
    master_beat_lock_name="celery-beat:production",
    beat_schedule={
        "report-every-10s": {"task": "examples.production.report", "schedule": 10.0},
    },
)


def poll_feed(ctx: celery_master.MasterContext) -> None:
    """One poller in the whole cluster; its epoch goes into every task it sends."""
    while not ctx.stopping.wait(5.0):
        if ctx.is_master():
            ingest.apply_async(kwargs={"epoch": ctx.epoch})
            ctx.alive(within=15.0)  # `celery master status --check` alarms if this stops


celery_master.register(app, "FEED-POLLER", poll_feed)


@app.task
def report() -> str:
    log.info("periodic report")
    return "ok"


@app.task
def ingest(epoch: int) -> int:
    return epoch
