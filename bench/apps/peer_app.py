"""The beat app the peers run (celery-redbeat, single-beat): a 1 s schedule, every send journaled.

Configured from the environment: PEER_BROKER_URL, PEER_JOURNAL, PEER_REDBEAT
(1 to use celery-redbeat), PEER_REDBEAT_LOCK_TIMEOUT and PEER_MAX_INTERVAL
(empty: the peer's documented defaults).
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery, signals

app = Celery("peer_app", broker=os.environ["PEER_BROKER_URL"])
app.conf.beat_schedule = {
    "beat-tick": {
        "task": "bench.apps.peer_app.beat_tick",
        "schedule": float(os.environ.get("PEER_PERIOD", "1.0")),
    },
}
app.conf.beat_schedule_filename = os.environ.get("PEER_SCHEDULE_FILE", "celerybeat-schedule")
if os.environ.get("PEER_REDBEAT") == "1":
    app.conf.beat_scheduler = "redbeat.RedBeatScheduler"
    app.conf.redbeat_redis_url = os.environ["PEER_BROKER_URL"]
    if os.environ.get("PEER_REDBEAT_LOCK_TIMEOUT"):
        app.conf.redbeat_lock_timeout = int(os.environ["PEER_REDBEAT_LOCK_TIMEOUT"])
if os.environ.get("PEER_MAX_INTERVAL"):
    app.conf.beat_max_loop_interval = float(os.environ["PEER_MAX_INTERVAL"])


@signals.before_task_publish.connect
def journal_send(sender: str | None = None, **kwargs: object) -> None:
    if sender != "bench.apps.peer_app.beat_tick":
        return
    with open(os.environ["PEER_JOURNAL"], "a") as fh:
        fh.write(json.dumps({"event": "send", "t": time.time(), "pid": os.getpid()}) + "\n")


@app.task
def beat_tick() -> None:
    return None
