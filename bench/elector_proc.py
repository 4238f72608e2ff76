"""One elector-only process (the elector code without a Celery worker), for bench/dbload.py
and bench/spread.py.

argv: database URL, number of lock names, node name, heartbeat interval, check
interval, counter file. Runs until SIGTERM, then hands its leases over like a
worker's warm shutdown. Every 0.2 s it writes its cumulative transactions and
statements (counted on its own engine) and CPU seconds to the counter file as
JSON. Elector-only processes send no broadcast hints: a lease the spread hands
over is taken at the receiver's next look instead of at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from sqlalchemy import event

from celery_master.election.elector import Elector
from celery_master.holder import Holder
from celery_master.jobs.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine


def main() -> None:
    logging.getLogger("celery_master").setLevel(logging.ERROR)  # role changes are not news here
    url, n_locks, node = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    hb, check, counter = float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    settings = JobSettings(1.0, check, hb, 3)
    store = LeaseStore(create_lease_engine(url, timeout=settings.heartbeat_interval))
    counts = {"tx": 0, "statements": 0}

    @event.listens_for(store.engine, "begin")
    def count_tx(*_args: object) -> None:
        counts["tx"] += 1

    @event.listens_for(store.engine, "before_cursor_execute")
    def count_stmt(*_args: object) -> None:
        counts["statements"] += 1

    jobs = [(MasterJob(f"LOCK-{i:02d}", lambda ctx: None), settings) for i in range(n_locks)]
    elector = Elector(store, jobs, Holder(node), app_name="bench")
    elector.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        held = sum(lk.held for lk in elector.locks.values())
        out = {**counts, "cpu": sum(os.times()[:2]), "held": held}
        tmp = f"{counter}.tmp"
        with open(tmp, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, counter)
    elector.stop(timeout=5)


if __name__ == "__main__":
    main()
