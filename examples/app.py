"""Example app, embedded default: `celery -A examples.app worker -P solo -n w1@%h`, several times.

Every worker joins the election for HEARTBEAT; exactly one sends the
"application is up" heartbeat; kill it and another takes over.
"""

from __future__ import annotations

import logging
import os

from celery import Celery

import celery_master

DATA = os.path.abspath(os.environ.get("EXAMPLE_DATA_DIR", ".demo"))
log = logging.getLogger("examples.app")

app = Celery("example")
app.conf.update(
    broker_url="filesystem://",
    # kombu's transport minus its races; it creates these folders when a worker connects
    broker_transport="celery_master.transport:FilesystemTransport",
    broker_transport_options={  # absolute folders, data in = data out; poll fast for hints
        "data_folder_in": f"{DATA}/broker",
        "data_folder_out": f"{DATA}/broker",
        "control_folder": f"{DATA}/control",
        "store_processed": False,
        "polling_interval": 0.1,
    },
    broker_connection_retry_on_startup=True,
    master_database_url=f"sqlite:///{DATA}/leases.sqlite3",
)


def start(ctx: celery_master.MasterContext) -> None:
    """Runs on the master only, in a thread of its own, until ctx.stopping is set."""
    log.warning("I am master of %s (epoch %d)", ctx.lock_name, ctx.epoch)
    while not ctx.stopping.wait(1.0):
        log.warning("heartbeat: application is up (epoch %d)", ctx.epoch)


def stop(ctx: celery_master.MasterContext) -> None:
    log.warning("no longer master of %s (epoch %d)", ctx.lock_name, ctx.epoch)


celery_master.register(app, "HEARTBEAT", start, stop)


@app.task
def add(x: int, y: int) -> int:
    return x + y
