"""The one clock every duration of the election is measured on.

``CLOCK_BOOTTIME`` on Linux keeps counting while the host is suspended, so a
holder that was suspended and resumed sees its term as ended; ``time.monotonic``
elsewhere. Wall clocks never decide anything about mastership.
"""

from __future__ import annotations

import time

__all__ = ["now"]

try:
    _BOOTTIME = time.CLOCK_BOOTTIME  # type: ignore[attr-defined]
    time.clock_gettime(_BOOTTIME)
except (AttributeError, OSError):  # not Linux
    now = time.monotonic
else:

    def now() -> float:
        """Seconds on a clock that never steps and keeps running through suspend."""
        return time.clock_gettime(_BOOTTIME)
