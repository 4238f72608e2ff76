"""The chaos soak's faults: each one done to real processes, servers or clocks.

Each fault records ``(kind, at, allowed)``: the journal instant it began and how
long the cluster may take to recover from it (its failover window). Recovery
actions (SIGCONT, a server start, a worker restart) run later from the soak's
loop; one that fails is counted, never swallowed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any

import sqlalchemy as sa

__all__ = ["CLASSIC", "FaultsMixin", "KINDS", "NEW"]

PROCESS = ["kill9", "sigterm", "sigstop", "restart"]
DATABASE = ["db_stop", "db_kill_conns", "db_slow", "db_blip", "clock_db"]
CLASSIC = [*PROCESS, "db_stop", "db_kill_conns", "db_slow", "broker_stop", "control_storm"]
NEW = ["db_blip", "late_broadcast", "clock_worker", "clock_db"]
KINDS = [*CLASSIC, *NEW]
CONTROL = ("control_storm", "late_broadcast")
OFFSETS = {"worker": ("+1h", "-1h", "+0"), "db": ("-1h", "+0")}
#: Why the database server's clock is never put ahead of the real one: libfaketime 0.9.10
#: leaves the clock unfaked inside PostgreSQL's SIGALRM handler, so with an offset of +N s
#: every statement_timeout, lock_timeout and idle_in_transaction_session_timeout fires N s
#: late (measured: a 500 ms lock_timeout after 2.5 s at +2 s, never at +1 h). A soak
#: would then hold the fence and the election's statements far past the bounds the product
#: sets, which no real clock step does. Between -1 h and true time the clock still steps
#: both ways, by an hour each.
LATE_PAUSE = 4.0  # a standby paused this long misses a broadcast sent with a 1 s timeout


class FaultsMixin:
    """Fault injection for ``bench.chaos.Soak`` (which owns the attributes used here)."""

    rng: Any
    pg: Any
    redis: Any
    ttl: float
    check: float
    url: str
    faults: list[tuple[str, float, float]]
    killed: dict[int, float]
    signalled: set[int]
    paused: set[int]
    disabled: dict[str, float]
    control_windows: list[tuple[str, float, float]]
    late: list[dict[str, Any]]
    control_until: float
    quiet_until: float
    db_down: bool
    clock_files: dict[str, Any]
    kinds: list[str]
    unplayed: list[str]  # kinds not injected yet
    waiting: str | None  # a fault that waits for every window to close
    db_clock_offsets: list[float]

    def now(self) -> float: ...
    def later(self, delay: float, action: Any) -> None: ...
    def cluster_of(self, lock: str) -> Any: ...
    def master_pid(self, lock: str) -> int | None: ...
    def victim_locks(self) -> list[str]: ...
    def restart(self, worker: Any, delay: float) -> None: ...

    # -- choosing ---------------------------------------------------------------
    def not_applicable(self, kind: str) -> str | None:
        """Why ``kind`` cannot be injected in this soak (reported, never dropped silently)."""
        if kind in DATABASE and self.pg is None:
            return "needs --db postgresql"
        if kind == "broker_stop" and self.redis is None:
            return "needs --broker redis (the filesystem broker has no server to stop)"
        if kind == "clock_worker" and "worker" not in self.clock_files:
            return "needs libfaketime on a worker"
        if kind == "clock_db" and "db" not in self.clock_files:
            return "needs libfaketime on PostgreSQL"
        return None

    def pick(self) -> str:
        """A fault waiting for a quiet cluster first; then each kind once, in a seeded
        order, before any kind twice: every kind the soak names gets its chance to run."""
        drawn = self.rng.choice(self.kinds)
        if self.waiting is not None:
            return self.waiting
        return self.unplayed[0] if self.unplayed else drawn

    def inject(self, kind: str) -> None:
        """Inject ``kind`` (or the fault that stands in for it now) and note what ran."""
        self.waiting = None
        done = self.inject_now(kind)
        if done in self.unplayed:
            self.unplayed.remove(done)
        elif kind in self.unplayed and self.waiting is None:  # not possible now: later
            self.unplayed.append(self.unplayed.pop(self.unplayed.index(kind)))

    def busy_until(self) -> float:
        """When the last fault window open now closes (a control storm's included)."""
        return max([at + allowed for _k, at, allowed in self.faults] + [self.control_until])

    def inject_now(self, kind: str) -> str | None:
        if kind == "late_broadcast" and self.busy_until() > self.now() - self.ttl:
            # measured alone, or not at all: wait until every window has closed a ttl ago
            self.waiting = kind
            self.quiet_until = self.busy_until() + self.ttl
            return None
        if kind in CONTROL and self.now() < self.control_until:
            kind = "db_kill_conns" if self.pg is not None else "sigterm"
        at = self.now()
        allowed = self.ttl + self.check + 2
        if kind in PROCESS:
            extra = self.process_fault(kind, at)
            if extra is None:
                return None
            allowed += extra
        elif kind in ("db_stop", "db_blip") and self.db_down:
            return None  # it is down already: this fault overlaps the one that stopped it
        elif kind == "db_stop":
            down = self.rng.uniform(1, 2 * self.ttl)
            self.db_down = True
            self.pg.stop()
            self.later(down, self.db_start)
            allowed += down
        elif kind == "db_blip":  # a restart of about a second, shorter than the self-stop time
            self.db_down = True
            self.pg.stop()
            self.db_start()
            allowed += self.now() - at
        elif kind == "db_kill_conns":
            self.admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'celery-master' AND pid <> pg_backend_pid()"
            )
        elif kind == "db_slow":
            hold = self.ttl + 1
            self.hold_lock(hold)
            allowed += hold
        elif kind == "broker_stop":
            self.redis.proc.send_signal(signal.SIGSTOP)
            self.later(self.rng.uniform(1, 3), lambda: self.redis.proc.send_signal(signal.SIGCONT))
        elif kind == "control_storm":
            self.storm()
            allowed = 0
        elif kind == "late_broadcast":
            if not self.late_broadcast(at):
                return None
            allowed += LATE_PAUSE
        elif kind in ("clock_worker", "clock_db"):
            self.step_clock("worker" if kind == "clock_worker" else "db")
            allowed = 0  # no clock decides anything: a step must cost nothing
        self.faults.append((kind, at, allowed))
        return kind

    # -- processes --------------------------------------------------------------
    def process_fault(self, kind: str, at: float) -> float | None:
        """Signal the master of a random lock (or beat); the extra window it needs."""
        lock = self.rng.choice(self.victim_locks())
        pid = self.master_pid(lock)
        if not pid or pid in self.paused:
            return None
        cluster = self.cluster_of(lock)
        worker = cluster.worker(pid)
        self.signalled.add(pid)
        if kind == "kill9":
            os.kill(pid, signal.SIGKILL)
            self.killed[pid] = at
            self.restart(worker, self.rng.uniform(0.5, 2))
        elif kind in ("sigterm", "restart"):
            os.kill(pid, signal.SIGTERM)
            self.restart(worker, 0.1 if kind == "restart" else self.rng.uniform(0.5, 2))
        else:
            pause = self.ttl + self.rng.uniform(0.5, 2)
            self.pause(pid, pause)
            return pause
        self.track_failover(kind, lock, pid, at)
        return 0.0

    def pause(self, pid: int, seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.paused.add(pid)

        def resume() -> None:
            self.paused.discard(pid)
            with contextlib.suppress(ProcessLookupError):  # killed meanwhile by another fault
                os.kill(pid, signal.SIGCONT)

        self.later(seconds, resume)

    def track_failover(self, kind: str, lock: str, pid: int, at: float) -> None: ...

    # -- the database -------------------------------------------------------------
    def db_start(self) -> None:
        self.pg.start()  # raises when it cannot: a recovery failure the report counts
        self.db_down = False

    def admin(self, sql: str) -> None:
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        except sa.exc.OperationalError:
            pass  # the database is down right now: that fault overlaps another
        finally:
            engine.dispose()

    def hold_lock(self, seconds: float) -> None:
        """A slow database: the lease table locked by someone else for longer than the lease."""
        script = (
            "import sqlalchemy as sa, sys, time\n"
            "e = sa.create_engine(sys.argv[1])\n"
            "with e.begin() as c:\n"
            "    c.execute(sa.text('LOCK TABLE celery_master_lease IN ACCESS EXCLUSIVE MODE'))\n"
            "    time.sleep(float(sys.argv[2]))\n"
        )
        subprocess.Popen(
            [sys.executable, "-c", script, self.url, str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    # -- clocks -----------------------------------------------------------------
    def step_clock(self, where: str) -> None:
        """Step a wall clock by writing libfaketime's offset file (read on every call).

        The stepped worker journals its own wall clock (the journal app); the
        server's is read back once its libfaketime cache (1 s) has expired.
        """
        path = self.clock_files[where]
        current = path.read_text().strip()
        path.write_text(self.rng.choice([o for o in OFFSETS[where] if o != current]) + "\n")
        if where == "db":
            self.later(2.0, self.read_db_clock)

    def read_db_clock(self) -> None:
        """The database server's wall clock against the soak's: the evidence a step happened."""
        engine = sa.create_engine(self.url, connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as conn:
                db = conn.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())"))
                self.db_clock_offsets.append(float(db.scalar()) - self.now())
        except sa.exc.OperationalError:  # down right now (another fault): read it once back
            self.later(1.0, self.read_db_clock)
        finally:
            engine.dispose()

    # -- operators --------------------------------------------------------------
    def storm(self) -> None:
        self.control_until = self.now() + 10
        locks = [lock for lock in self.victim_locks() if not lock.startswith("beat:")]
        for _ in range(self.rng.randint(3, 6)):
            lock = self.rng.choice(locks)
            action = self.rng.choice(["disable", "enable", "release"])
            words = [action, lock] + (["--reason", "chaos"] if action == "disable" else [])
            issued = self.now()  # a window ends when the enable is *issued*: it may apply early
            result = self.cluster_of(lock).celery("master", *words, timeout=60)
            if action == "disable" and result.returncode == 0:
                self.disabled.setdefault(lock, self.now())  # ... and starts once applied
            elif action == "enable" and lock in self.disabled and result.returncode == 0:
                self.control_windows.append((lock, self.disabled.pop(lock), issued))
        self.later(self.rng.uniform(1, 3), self.enable_all)

    def enable_all(self) -> None:
        for lock in list(self.disabled):
            issued = self.now()
            if self.cluster_of(lock).celery("master", "enable", lock, timeout=60).returncode == 0:
                self.control_windows.append((lock, self.disabled.pop(lock), issued))
        if self.disabled:  # the database was down: the operator tries again
            self.later(1.0, self.enable_all)

    def late_broadcast(self, at: float) -> bool:
        """A standby paused while a bare broadcast flies: it must not act on it late.

        ``release``: one command, exactly one hand-over. ``disable`` then a later
        ``celery master enable``: the late disable must not undo the enable.
        """
        locks = [lock for lock in self.victim_locks() if not lock.startswith("beat:")]
        lock = self.rng.choice(locks)
        cluster, master = self.cluster_of(lock), self.master_pid(lock)
        standbys = [
            w
            for w in cluster.workers
            if w.alive() and w.pid != master and w.pid not in self.paused and runs(w, lock)
        ]
        if master is None or not standbys:
            return False
        standby = self.rng.choice(standbys)
        action = self.rng.choice(["release", "disable"])
        self.control_until = at + LATE_PAUSE + 2 * self.ttl + self.check + 4
        self.quiet_until = self.control_until  # no other fault moves locks meanwhile
        late: dict[str, Any] = {"lock": lock, "action": action, "at": at, "master": master}
        late["history_from"] = self.last_history_id(lock)  # the release's rows come after
        self.pause(standby.pid, LATE_PAUSE)
        words = ["control", "mastercontrol", action, lock, "--timeout", "1"]
        sent = cluster.celery(*words, *(["late"] if action == "disable" else []), timeout=60)
        if action == "disable":
            cluster.celery("master", "enable", lock, timeout=60)
        late.update(resumed=at + LATE_PAUSE, sent_ok=sent.returncode == 0)
        self.late.append(late)

        def window_closed() -> None:
            late["history_to"] = self.last_history_id(lock)

        self.later(at + LATE_PAUSE + 2 * self.ttl + self.check + 2 - self.now(), window_closed)
        return True

    def last_history_id(self, lock: str) -> int | None:
        """The newest history row of ``lock`` (None while the database is down)."""
        engine = sa.create_engine(self.url, connect_args={"connect_timeout": 2})
        try:
            with engine.connect() as conn:
                newest = conn.execute(
                    sa.text("SELECT max(id) FROM celery_master_history WHERE lock_name = :n"),
                    {"n": lock},
                ).scalar()
                return int(newest or 0)
        except sa.exc.OperationalError:
            return None
        finally:
            engine.dispose()


def runs(worker: Any, lock: str) -> bool:
    """Whether ``worker`` runs ``lock`` (its own JOURNAL_LOCKS, else its cluster's)."""
    locks = worker.extra_env.get("JOURNAL_LOCKS")
    return locks is None or lock in locks.split(",")
