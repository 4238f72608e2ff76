"""The faults users most need to test, for in-process workers: a crash, a partition, an outage.

In-process workers are threads of the test process: they cannot be killed or
frozen. These faults act at the seams the election already has, so the
election code runs as it does in production:

* a **partition** cuts one worker off at its connection to the lease
  database (every statement of its engine fails as an unreachable server's
  would): renewals stop, its job runs on until the self-stop deadline, then
  ``ctx.is_master()`` turns false and ``stop()`` is called;
* a **crash** is a partition that never heals, plus every job stopped at once
  (as the process's death would end them) and the worker shut down: the lease
  is never released, so another worker takes over only after the ttl;
* a **database outage** makes the SQLite lease file unreachable for real: a
  connection of our own holds an exclusive lock on it, so every worker's
  statements fail with "database is locked" until it is released.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from ..store.engine import sqlite_path

__all__ = ["Partition", "database_outage"]


class Partition:
    """One worker's connection to the lease database, cut and healed on demand."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.cut = threading.Event()
        self._timer: threading.Timer | None = None
        event.listen(engine, "before_cursor_execute", self._refuse)

    def _refuse(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.cut.is_set():
            raise OperationalError(
                statement, None, ConnectionError("partitioned from the lease database (test)")
            )

    def start(self, seconds: float | None) -> None:
        self.cut.set()
        if seconds is not None:
            self._timer = threading.Timer(seconds, self.heal)
            self._timer.daemon = True
            self._timer.start()

    def heal(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.cut.clear()


@contextlib.contextmanager
def database_outage(database_url: str) -> Iterator[None]:
    """The SQLite lease file is locked by another connection: nobody reaches it until exit."""
    path = sqlite_path(database_url)
    if path is None:
        raise ValueError(
            "database_outage() locks the SQLite lease file; for PostgreSQL stop the server "
            "(or block its port) in your own fixture"
        )
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()
