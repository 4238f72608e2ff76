"""Throwaway PostgreSQL and Redis servers for the tests, started from the machine's binaries.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user in a folder that user owns; as anyone else it runs as that user.

A free port found by binding port 0 can be taken by someone else before the
server binds it, so each start is proved, not assumed: the server must answer
on the port *and* be the process we started (Redis ``INFO server`` process_id
and run_id; PostgreSQL's ``postmaster.pid`` and its ``data_directory``). A
start that fails to bind is retried on a new port; any other failed start
raises at once with the server's log tail, and leaves no folder and no
daemonised postmaster behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

__all__ = ["PgServer", "RedisServer", "ServerStartError", "free_port"]

BIND_ATTEMPTS = 5
T = TypeVar("T")


class ServerStartError(RuntimeError):
    """A test server did not start; the message carries its log tail."""


class PortTaken(ServerStartError):
    """The port was taken between choosing it and binding it: try another one."""


def free_port() -> int:
    """A port nobody listens on *now*; the caller must cope with losing it (see above)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, since: int = 0, lines: int = 25) -> str:
    """The last ``lines`` of ``path`` written after byte ``since`` (this start's lines)."""
    try:
        with path.open("rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _on_free_ports(start: Callable[[int], T]) -> T:
    """Call ``start(port)`` on fresh ports until one binds; other failures raise at once."""
    for attempt in range(BIND_ATTEMPTS):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _as_postgres(cmd: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """``cmd`` as the server's user; ``env`` goes through ``env(1)`` (runuser drops some)."""
    if env:
        cmd = ["env", *(f"{k}={v}" for k, v in env.items()), *cmd]
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PgServer:
    """One PostgreSQL cluster on a port of its own; ``stop()``/``start()`` simulate an outage.

    ``extra`` adds server options (e.g. ``-c track_commit_timestamp=on``);
    ``env`` is the server's extra environment (e.g. ``LD_PRELOAD`` of libfaketime).
    """

    user = "postgres"

    def __init__(self, extra: str = "", env: Mapping[str, str] | None = None) -> None:
        self.extra = extra
        self.env = dict(env or {})
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="celery-master-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        try:
            if os.geteuid() == 0:
                shutil.chown(self.dir, "postgres", "postgres")
            done = subprocess.run(
                _as_postgres(
                    ["initdb", "-D", str(self.data), "-A", "trust", "-U", self.user]
                    + ["--no-sync", "-E", "UTF8"]
                ),
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise ServerStartError(f"initdb failed:\n{done.stdout}{done.stderr}")
            _on_free_ports(self._start_on)
        except BaseException:
            self.close()
            raise

    def _start_on(self, port: int) -> None:
        self.port = port
        self.start()

    def start(self) -> None:
        """Start on ``self.port`` (a restart keeps the port its clients know).

        fsync is off (the machine does not crash under a test) but commits stay
        synchronous: an immediate stop, the outage tests' fault, must not lose an
        acknowledged commit, or epochs would repeat after the restart.
        """
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200 "
            f"{self.extra}"
        )
        since = self.log.stat().st_size if self.log.exists() else 0
        done = subprocess.run(
            _as_postgres(
                ["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w"]
                + ["-t", "60", "start"],
                self.env,
            ),
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            self._kill_postmaster()
            log = _tail(self.log, since)
            if "could not bind" in log or "already in use" in log:
                raise PortTaken(f"PostgreSQL could not bind port {self.port}:\n{log}")
            raise ServerStartError(
                f"PostgreSQL did not start on port {self.port}:\n{done.stderr}\n{log}"
            )
        self._prove_ours()

    def _prove_ours(self) -> None:
        """The server answering on our port is the postmaster of our data directory."""
        import psycopg2

        lines = (self.data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        try:
            conn = psycopg2.connect(
                host="127.0.0.1", port=self.port, user=self.user, dbname="postgres"
            )
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW data_directory")
                    (data,) = cur.fetchone()
            finally:
                conn.close()
        except psycopg2.Error as exc:
            self._kill_postmaster()
            msg = f"PostgreSQL on port {self.port} does not answer: {exc}"
            raise ServerStartError(msg) from exc
        if port != self.port or Path(data).resolve() != self.data.resolve():
            self._kill_postmaster()
            raise PortTaken(f"port {self.port} answers for {data}, not for our postmaster {pid}")

    def _kill_postmaster(self) -> None:
        """No daemonised postmaster outlives a failed start."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 9)
            end = time.monotonic() + 10
            while time.monotonic() < end:
                os.kill(pid, 0)
                time.sleep(0.05)

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=True,
            capture_output=True,
        )

    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def url(self, dbname: str = "postgres", driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{self.user}:secret-pw@127.0.0.1:{self.port}/{dbname}"

    def janitor(self, dbname: str):  # type: ignore[no-untyped-def]
        from pytest_postgresql.janitor import DatabaseJanitor

        return DatabaseJanitor(
            user=self.user, host="127.0.0.1", port=self.port, dbname=dbname, password="secret-pw"
        )

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop()
            self._kill_postmaster()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer:
    """One Redis on a port of its own, with ``databases`` numbered databases to hand out.

    ``args`` are more server options (e.g. ``--requirepass``, as a compose file
    starts it); ``password`` is what this class's own clients authenticate with.
    """

    databases = 64

    def __init__(self, args: list[str] | None = None, password: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="celery-master-redis-"))
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.run_id = ""
        self.args = list(args or [])
        self.password = password
        try:
            _on_free_ports(self._start_on)
        except BaseException:
            self.close()
            raise

    def _start_on(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log)]
            + ["--databases", str(self.databases), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = _tail(self.log)
                if "already in use" in log or "bind" in log.lower():
                    raise PortTaken(f"Redis could not bind port {port}:\n{log}")
                raise ServerStartError(f"Redis exited at start ({self.proc.returncode}):\n{log}")
            info = self._info()
            if info is not None:
                if int(info["process_id"]) != self.proc.pid:
                    self.proc.kill()
                    self.proc.wait()
                    raise PortTaken(f"port {port} answers for Redis pid {info['process_id']}")
                self.run_id = str(info["run_id"])
                return
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise ServerStartError(f"Redis did not answer on port {port} in 30 s:\n{_tail(self.log)}")

    def _info(self) -> dict[str, object] | None:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_timeout=2, password=self.password)
            try:
                return client.info("server")  # type: ignore[no-any-return]
            finally:
                client.close()
        except redis.RedisError:
            return None

    @property
    def url(self) -> str:
        """Database 0; tests take a database of their own with the ``redis_url`` fixture."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def flushdb(self, db: int) -> None:
        import redis

        client = redis.Redis(port=self.port, db=db, socket_timeout=10, password=self.password)
        try:
            client.flushdb()
        finally:
            client.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
