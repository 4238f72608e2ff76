"""Makes ``time.sleep`` work under libfaketime with FAKETIME_DONT_FAKE_MONOTONIC=1.

On PYTHONPATH only for a worker whose wall clock the chaos soak steps. Debian's
libfaketime 0.9.10 wraps ``clock_nanosleep`` and fails Python's absolute
CLOCK_MONOTONIC sleep with EINVAL once monotonic time is left unfaked (the
worker's broker loop then dies). ``select`` with a timeout sleeps the same
relative time and is passed through untouched, so the worker runs unchanged
apart from its stepped wall clock.
"""

from __future__ import annotations

import os
import select
import time

if "faketime" in os.environ.get("LD_PRELOAD", ""):

    def _sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            select.select([], [], [], left)

    time.sleep = _sleep
