"""A Celery app whose master job reports progress until told to stall, for the CLI's --check tests.

Configured from the environment: CELERY_MASTER_DATABASE_URL, PROGRESS_FS_DIR
(filesystem broker folder), PROGRESS_WITHIN (seconds, ``ctx.alive(within)``),
PROGRESS_STALL_FILE (while that file exists the job goes on holding the lease
but stops reporting: the "beat answers pings but sends nothing" failure).
"""

from __future__ import annotations

import os

from celery import Celery

import celery_master

app = Celery("progress_app")
_fs = os.environ.get("PROGRESS_FS_DIR", os.path.abspath(".progress-broker"))
for _sub in ("in", "processed"):
    os.makedirs(os.path.join(_fs, _sub), exist_ok=True)
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
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True

WITHIN = float(os.environ.get("PROGRESS_WITHIN", "1.0"))
STALL = os.environ.get("PROGRESS_STALL_FILE", "stall")


def work(ctx: celery_master.MasterContext) -> None:
    while not ctx.stopping.wait(WITHIN / 4):
        if not os.path.exists(STALL):
            ctx.alive(within=WITHIN)


celery_master.register(app, "PROGRESS-JOB", work)
