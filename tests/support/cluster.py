"""Real ``celery worker`` processes of tests/apps/journal_app.py, and their journal.

Workers boot in turn (each waits for the previous one's "ready"): kombu's
filesystem transport writes its exchange files without a lock, and workers
booting at the same instant can read an empty file and die.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_master.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["FAST_TIMING", "Cluster", "Journal", "foreign_environ", "wait_for", "worker_argv"]

#: environment the tests must never inherit: Celery's and our settings, the journal
#: app's own knobs, and libfaketime's (a stepped clock is opted into, never inherited)
FOREIGN_PREFIXES = ("CELERY_", "JOURNAL_", "FLOWER_", "FAKETIME")
FOREIGN_NAMES = ("DJANGO_SETTINGS_MODULE",)

#: timing for process tests: ttl 1.5 s, so faults resolve in seconds
FAST_TIMING = {
    "init_delay": 0.2,
    "check_interval": 0.5,
    "heartbeat_interval": 0.5,
    "max_heartbeat_retry_count": 2,
}


def foreign_environ(environ: dict[str, str] | None = None) -> list[str]:
    """Names in ``environ`` (default: ours) that would steer Celery or the journal app."""
    env = os.environ if environ is None else environ
    return [k for k in env if k.startswith(FOREIGN_PREFIXES) or k in FOREIGN_NAMES]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; fail naming ``what``."""
    return wait_until(cond, timeout, what, step)


def worker_argv(name: str, pool: str = "solo") -> list[str]:
    """The ``celery worker`` command line of the journal app (tests and benchmarks)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.apps.journal_app",
        "worker",
        "-P",
        pool,
        "-n",
        f"{name}@%h",
        "-l",
        "info",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen  # type: ignore[type-arg]
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)  # kept for a restart
    extra_args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None


class Journal:
    """Reads the JSON lines written by the journal app's master job."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, kind: str | None = None, lock: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if (kind is None or ev["event"] == kind) and (lock is None or ev["lock"] == lock):
                out.append(ev)
        return out

    def starts(self, lock: str | None = None) -> list[dict[str, Any]]:
        return self.events("start", lock)

    def terms(
        self, lock: str, ends: dict[int, float] | None = None
    ) -> list[tuple[float, float, int]]:
        """(start, end, pid) of every term; ``ends`` ends the terms of killed or paused pids."""
        ends = ends or {}
        stops = {(e["pid"], e["epoch"]): e["t"] for e in self.events("stop", lock)}
        out = []
        for s in self.starts(lock):
            end = min(
                stops.get((s["pid"], s["epoch"]), float("inf")), ends.get(s["pid"], float("inf"))
            )
            out.append((s["t"], end, s["pid"]))
        return sorted(out)

    def assert_no_overlap(self, lock: str, ends: dict[int, float] | None = None) -> None:
        terms = self.terms(lock, ends)
        for (s1, e1, p1), (s2, _e2, p2) in zip(terms, terms[1:], strict=False):
            assert e1 <= s2, (
                f"terms overlap on {lock}: pid {p1} [{s1}, {e1}] and pid {p2} from {s2}"
            )

    def assert_epochs_grow(self, lock: str) -> None:
        """Each acquisition bumps the epoch: in start order, epochs strictly grow (S2).

        The invariant, not the numbers: under load a standby may take over twice
        before the test looks, so "the second master has epoch 2" is not promised.
        """
        epochs = [s["epoch"] for s in sorted(self.starts(lock), key=lambda s: s["t"])]
        assert epochs == sorted(set(epochs)), f"epochs of {lock} in start order: {epochs}"

    def assert_no_stale_tick(self, lock: str) -> None:
        """No tick that claimed mastership is dated after a newer epoch's start."""
        starts = {s["epoch"]: s["t"] for s in self.starts(lock)}
        for tick in self.events("tick", lock):
            if not tick["is_master"]:
                continue
            newer = [t for ep, t in starts.items() if ep > tick["epoch"]]
            assert not newer or tick["at"] < min(newer), f"stale tick claimed mastership: {tick}"


@dataclass
class Cluster:
    """Boots and signals journal-app workers; everything is killed at ``close()``."""

    dir: Path
    env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)
    counter: int = 0
    extra_args: list[str] = field(default_factory=list)
    pool: str = "solo"

    @classmethod
    def create(
        cls,
        tmp: Path,
        database_url: str,
        broker_url: str | None = None,
        locks: str = "JOB-SCHEDULER",
        env: dict[str, str] | None = None,
        **settings: float,
    ) -> Cluster:
        """``env`` adds journal-app knobs (JOURNAL_APP_NAME, JOURNAL_WEIGHTS, ...)."""
        inherited = dict(os.environ)
        for name in foreign_environ(inherited):
            del inherited[name]
        extra, env = env or {}, inherited
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "JOURNAL_FILE": str(tmp / "journal.jsonl"),
                "JOURNAL_LOCKS": locks,
                "CELERY_MASTER_DATABASE_URL": database_url,
            }
        )
        if broker_url:
            env["JOURNAL_BROKER_URL"] = broker_url
        else:
            env["JOURNAL_FS_DIR"] = str(tmp / "broker")
        for key, value in settings.items():
            env[f"CELERY_MASTER_{key.upper()}"] = str(value)
        env.update(extra)
        return cls(tmp, env)

    @property
    def journal(self) -> Journal:
        return Journal(Path(self.env["JOURNAL_FILE"]))

    def setting(self, name: str, default: float) -> float:
        return float(self.env.get(f"CELERY_MASTER_{name.upper()}", default))

    @property
    def ttl(self) -> float:
        hb = self.setting("heartbeat_interval", 1.0)
        return hb * (self.setting("max_heartbeat_retry_count", 3) + 1)

    def start_worker(
        self,
        name: str | None = None,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> Worker:
        """``env``/``args``: this worker's own (its lock names, --master-beat, a faked clock)."""
        self.counter += 1
        name = name or f"w{self.counter}"
        log = self.dir / f"{name}-{self.counter}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [*worker_argv(name, self.pool), *self.extra_args, *(args or [])],
                cwd=self.dir,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = Worker(name, proc, log, dict(env or {}), list(args or []))
        self.workers.append(worker)
        if wait_ready:
            wait_for(
                lambda: "ready." in worker.log_text() or not worker.alive(),
                60,
                f"{name} to be ready",
            )
            assert worker.alive(), f"{name} died at boot:\n{worker.log_text()[-3000:]}"
        return worker

    def start_workers(self, n: int) -> list[Worker]:
        return [self.start_worker() for _ in range(n)]

    def celery(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``celery`` program against this cluster's app, as an operator would."""
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tests.apps.journal_app", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def master_pid(self, lock: str = "JOB-SCHEDULER") -> int | None:
        """Pid of the current master per the journal (last start without a stop)."""
        live = {w.pid for w in self.workers if w.alive()}
        stopped = {(e["pid"], e["epoch"]) for e in self.journal.events("stop", lock)}
        for s in reversed(self.journal.starts(lock)):
            if (s["pid"], s["epoch"]) not in stopped and s["pid"] in live:
                return int(s["pid"])
        return None

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of ``sql`` on the lease database, read as an operator would."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.env["CELERY_MASTER_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return list(conn.execute(sa.text(sql), params))
        finally:
            engine.dispose()

    def lease_holder_pid(self, lock: str = "JOB-SCHEDULER") -> int | None:
        """Pid in the lease row's holder (node:pid:instance), whether alive or not."""
        rows = self.query("SELECT holder FROM celery_master_lease WHERE lock_name = :n", n=lock)
        holder = rows[0][0] if rows else None
        return int(holder.rsplit(":", 2)[1]) if holder else None

    def worker(self, pid: int) -> Worker:
        return next(w for w in self.workers if w.pid == pid)

    def signal(self, pid: int, sig: signal.Signals) -> float:
        t = time.time()
        os.kill(pid, sig)
        return t

    def wait_new_start(
        self,
        after: float,
        timeout: float,
        lock: str = "JOB-SCHEDULER",
        exclude_pid: int | None = None,
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for s in self.journal.starts(lock):
                if s["t"] > after and s["pid"] != exclude_pid:
                    return s
            return None

        return wait_for(found, timeout, f"a new master of {lock}")

    def stray_pids(self) -> list[int]:
        """Processes still carrying this cluster's environment (workers and their children)."""
        mark = f"JOURNAL_FILE={self.env['JOURNAL_FILE']}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        for w in self.workers:
            if w.alive():
                try:
                    os.kill(w.pid, signal.SIGCONT)
                    w.proc.kill()
                except ProcessLookupError:
                    pass
        for w in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(10)
        for pid in self.stray_pids():  # e.g. a beat child orphaned by a worker that died
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
