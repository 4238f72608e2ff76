"""Proof that a hand-over went by a broadcast (the hint, or a command's own wake), not by a read.

A standby that holds no other lock reads a held lease again one check
interval after its last read; the ttl it watches and the round's cap of
10 x min(heartbeat, check) come later still (election/lockstate.py,
election/round.py). ``HINT_TIMING`` makes both intervals at least 10 x the
longest bound below, so once every standby has read the held lease (``wait_read``,
all after ``booted``), none reads it again before ``booted + QUIET``: a new
master that started by then, within its bound of the broadcast, was woken by
the broadcast. The new master's own log says so too: kombu logs every
broadcast a worker receives at DEBUG (the journal app turns that logger on),
and the package logs "became master" when the term starts.
"""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime
from typing import Any

from tests.support.cluster import Cluster, Worker, wait_for

__all__ = [
    "HANDOVER",
    "HINT_TIMING",
    "HOP",
    "QUIET",
    "RELEASE",
    "STALL",
    "assert_woken",
    "became_master",
    "wait_read",
    "woken_before",
]

STALL = 1.0  # room for one scheduling stall of a loaded machine
HOP = 0.5  # one broadcast (filesystem polling 0.1 s) and one SQL round trip, generously
HANDOVER = HOP + STALL  # L2: from the leaving master's stop() to the new master's start()
RELEASE = 2 * HOP + STALL  # an operator's release: a hop to the holder, its stop(), a hop on
#: how long after its last read a standby reads a held lease again: at least 10 x RELEASE,
#: and long enough for workers to boot and read once on a loaded machine before the fault
QUIET = 15 * RELEASE
HINT_TIMING: dict[str, float] = {
    "init_delay": 0.2,
    "check_interval": QUIET,
    "heartbeat_interval": QUIET,
    "max_heartbeat_retry_count": 1,
}

_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/MainProcess\] (.*)$", re.M)


def _node(worker: Worker) -> str:
    return f"{worker.name}@{socket.gethostname()}"


def wait_read(cluster: Cluster, lock: str, master: Worker, timeout: float = 30) -> None:
    """Wait until every other live worker has read the lease ``master`` holds (its own view).

    A standby that has not read yet would read at once when it gets there, and
    a lease freed by then is taken without any hint: that proves nothing.
    """
    nodes = {_node(w) for w in cluster.workers if w.alive()}

    def holders() -> dict[str, Any]:
        """Each node's reply; ``-d`` makes inspect return once every node has answered."""
        words = ["inspect", "master_status", lock, "--json", "-t", "5", "-d", ",".join(nodes)]
        try:
            replies = json.loads(cluster.celery(*words).stdout)
        except json.JSONDecodeError:
            return {}
        return {
            n: ((r or {}).get("ok") or {}).get(lock, {}).get("holder") for n, r in replies.items()
        }

    seen: list[dict[str, Any]] = [{}]

    def all_read() -> bool:
        seen[0] = holders()
        return set(seen[0]) == nodes and set(seen[0].values()) == {_node(master)}

    try:
        wait_for(all_read, timeout, f"every standby to read the lease {master.name} holds", 0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; holders seen: {seen[0]}") from None


def woken_before(worker: Worker, lock: str, line_end: str, method: str = "master_hint") -> float:
    """Seconds from the last ``method`` broadcast naming ``lock`` that ``worker`` received
    to its first log line ending ``line_end`` (after it), both from the worker's own log."""
    woken: datetime | None = None
    for match in _LINE.finditer(worker.log_text()):
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        message = match.group(2)
        if message.startswith(f"pidbox received method {method}(") and repr(lock) in message:
            woken = at
        elif message.endswith(line_end):
            assert woken is not None, f"{worker.name}: {line_end!r} with no {method} before"
            return (at - woken).total_seconds()
    raise AssertionError(f"{worker.name}'s log has no line ending {line_end!r}")


def became_master(lock: str, epoch: int) -> str:
    return f" became master of {lock!r} (epoch {epoch})"


def assert_woken(
    cluster: Cluster,
    new: dict[str, Any],
    booted: float,
    lock: str,
    bound: float = HANDOVER,
    method: str = "master_hint",
) -> None:
    """The new master (a journal start) was woken by ``method``, not by a read of its own.

    ``booted``: an instant before any worker that could have read the lease started.
    """
    worker = cluster.worker(new["pid"])
    took = woken_before(worker, lock, became_master(lock, new["epoch"]), method)
    assert 0 <= took < bound, (
        f"{worker.name} became master {took:.3f}s after it received {method}, not within "
        f"{bound}s: it was not woken by it"
    )
    assert new["t"] < booted + QUIET, (
        f"the new master started {new['t'] - booted:.1f}s after the workers booted, when a "
        f"standby's second read ({QUIET}s after its first) may have found the lease: "
        "the test was too slow to tell a broadcast from a read"
    )
