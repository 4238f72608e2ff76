"""One elector-only process (the elector code without a Celery worker), for bench/dbload.py.

argv: database URL, number of lock names, seconds to run, node name. Prints one
JSON line: statements sent, CPU seconds used, locks held at the end. With
seconds <= 0 it runs until SIGTERM and then hands its leases over.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from sqlalchemy import event

from celery_master.elector import Elector, Role
from celery_master.holder import Holder
from celery_master.job import MasterJob
from celery_master.settings import JobSettings
from celery_master.store import LeaseStore, create_lease_engine


def main() -> None:
    url, n_locks, seconds, node = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    settings = JobSettings()  # the defaults: check 1 s, heartbeat 1 s, ttl 4 s
    store = LeaseStore(create_lease_engine(url, timeout=settings.heartbeat_interval))
    counts = {"statements": 0}

    @event.listens_for(store.engine, "before_cursor_execute")
    def count(*_args: object) -> None:
        counts["statements"] += 1

    jobs = [(MasterJob(f"LOCK-{i:02d}", lambda ctx: None), settings) for i in range(n_locks)]
    elector = Elector(store, jobs, Holder(node))
    elector.start()
    if seconds <= 0:  # run until SIGTERM, then hand over like a worker's warm shutdown
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        stop.wait()
        elector.stop(timeout=5)
        return
    time.sleep(seconds / 2)  # warm-up: elections and spread settle
    before, cpu0 = counts["statements"], sum(os.times()[:2])
    time.sleep(seconds / 2)
    out = {
        "statements": counts["statements"] - before,
        "cpu": sum(os.times()[:2]) - cpu0,
        "window": seconds / 2,
        "held": sum(r is Role.MASTER for r in elector.roles().values()),
    }
    print(json.dumps(out), flush=True)
    elector.stop(timeout=5)


if __name__ == "__main__":
    main()
