"""docker-compose.yml starts: the image built as the Dockerfile builds it, every command run.

No Docker engine here, so this is the closest honest check: a clean venv, the
project copied as the Dockerfile's COPY lines copy it, the Dockerfile's own pip
install line, then every command of docker-compose.yml with its environment
(interpolated as Compose does): Redis started with the redis service's command
(its password), the postgres service's init scripts run against the suite's
PostgreSQL as the image runs them, the one-shot ``migrate`` to its end, then
the workers and Flower; the service host names ``postgres`` and ``redis`` are
mapped to loopback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg2
import pytest
import yaml

from tests.support.cluster import wait_for
from tests.support.servers import PgServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {
    "POSTGRES_PASSWORD": "compose-test-pw",
    "WORKER_DB_PASSWORD": "compose-worker-pw",
    "REDIS_PASSWORD": "compose-redis-pw",
    "FLOWER_BASIC_AUTH": "ops:flower-test-pw",
}
LOCKS = ("FEED-POLLER", "celery-beat:production")
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` substitution."""

    def sub(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if op.endswith("?") and not value:
            raise ValueError(f"required variable {name} is missing: {arg}")
        if op.endswith("-") and not value:
            return arg
        return value or ""

    return _VAR.sub(sub, value)


def dockerfile_build(dockerfile: Path) -> tuple[str, list[tuple[list[str], str]], list[str]]:
    """(workdir, [(sources, dest)], pip install words) read from the Dockerfile."""
    workdir, copies, install = "/", [], []
    for line in dockerfile.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "WORKDIR":
            workdir = words[1]
        elif words[0] == "COPY":
            copies.append((words[1:-1], words[-1]))
        elif words[0] == "RUN" and words[1:3] == ["pip", "install"]:
            install = words[3:]
    assert install, "the Dockerfile has no `RUN pip install ...` line"
    return workdir, copies, install


def build_image(tmp: Path) -> tuple[Path, Path]:
    """Return (venv bin folder, app folder): the image's filesystem, as far as the app sees."""
    _workdir, copies, install = dockerfile_build(ROOT / "Dockerfile")
    app = tmp / "app"
    app.mkdir()
    for sources, dest in copies:
        target = (app / dest).resolve()
        for src in sources:
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    words = [w for w in install if w != "--no-cache-dir"]  # reuse pip's cache: same packages
    done = subprocess.run(
        [str(tmp / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check", *words],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"the Dockerfile's pip install failed:\n{done.stderr[-3000:]}"
    return tmp / "venv" / "bin", app


def compose_database(pg: PgServer, postgres: dict, tmp: Path) -> None:
    """What the postgres service makes at its first start: the POSTGRES_USER role (a
    superuser in the image) owning POSTGRES_DB, then its init scripts, run as the image runs
    them (/docker-entrypoint-initdb.d, with the service's environment)."""
    env = {k: interpolate(str(v), SECRETS) for k, v in postgres["environment"].items()}
    user, db = env["POSTGRES_USER"], env["POSTGRES_DB"]
    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD %s", [env["POSTGRES_PASSWORD"]])
        cur.execute(f"CREATE DATABASE {db} OWNER {user}")
    conn.close()
    (folder,) = [
        v.split(":")[0] for v in postgres["volumes"] if ":/docker-entrypoint-initdb.d" in v
    ]
    scripts = sorted((ROOT / folder).glob("*.sh"))
    assert scripts, f"no init script in {folder}"
    for script in scripts:
        done = subprocess.run(
            ["sh", str(script)],
            env={**os.environ, **env, "PGHOST": "127.0.0.1", "PGPORT": str(pg.port)},
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{script.name}: {done.stdout}{done.stderr}"


def compose_redis(redis: dict) -> RedisServer:
    """Redis started with the redis service's own command (its options, its password)."""
    command = [interpolate(str(w), SECRETS) for w in redis["command"]]
    assert command[0] == "redis-server", command
    server = RedisServer(args=command[1:], password=SECRETS["REDIS_PASSWORD"])
    unauthenticated = subprocess.run(
        ["redis-cli", "-p", str(server.port), "ping"], capture_output=True, text=True
    )
    assert "NOAUTH" in unauthenticated.stdout + unauthenticated.stderr, "Redis must ask"
    return server


def database_roles(pg: PgServer) -> set[str]:
    """The roles the election's connections (application_name celery-master) log in as."""
    conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT usename FROM pg_stat_activity "
                "WHERE application_name = 'celery-master' AND datname = 'celery'"
            )
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def localise(text: str, pg: PgServer, redis: RedisServer, flower_port: int) -> str:
    """Service host names to loopback and the suite's ports (a container's network, here)."""
    # Flower's port first: a random port of the suite's servers may itself contain "5555"
    text = text.replace("5555", str(flower_port))
    text = text.replace("@postgres:5432/", f"@127.0.0.1:{pg.port}/")
    text = re.sub(r"redis://(:[^@/]*@)?redis:6379/", rf"redis://\g<1>127.0.0.1:{redis.port}/", text)
    return text.replace("--address=0.0.0.0", "--address=127.0.0.1")


def get(url: str, auth: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback only)
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture
def compose_redis_server(compose: dict):  # the suite's Redis asks no password: this one does
    server = compose_redis(compose["services"]["redis"])
    yield server
    server.close()


def test_compose_stack_starts_elects_one_master_per_lock_and_beat_sends(
    tmp_path, pg_server, compose_redis_server, compose
):
    redis_server = compose_redis_server
    built = {n: s for n, s in compose["services"].items() if s.get("build") == "."}
    one_shot = {n: s for n, s in built.items() if s.get("restart") == "no"}
    services = {n: s for n, s in built.items() if n not in one_shot}
    assert {"worker1", "worker2", "worker3", "flower"} <= set(services)
    assert set(one_shot) == {"migrate"}
    for secret in ("WORKER_DB_PASSWORD", "REDIS_PASSWORD"):  # a missing secret fails fast
        others = {k: v for k, v in SECRETS.items() if k != secret}
        with pytest.raises(ValueError, match=secret):
            interpolate(json.dumps(services["worker1"]["environment"]), others)
    for name, svc in services.items():
        if name.startswith("worker"):
            assert "-P" not in shlex.split(svc["command"]), "production workers use prefork"
    assert compose["services"]["flower"]["ports"] == ["${FLOWER_BIND:-127.0.0.1}:5555:5555"]

    bin_dir, app = build_image(tmp_path)
    compose_database(pg_server, compose["services"]["postgres"], tmp_path)
    flower_port = free_port()
    base_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }

    def service_env(svc: dict) -> dict[str, str]:
        env = dict(base_env)
        for key, raw in (svc.get("environment") or {}).items():
            value = interpolate(str(raw), SECRETS)
            env[key] = localise(value, pg_server, redis_server, flower_port)
        return env

    def run_check(svc: dict) -> subprocess.CompletedProcess[str]:
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD", test
        argv = [localise(w, pg_server, redis_server, flower_port) for w in test[1:]]
        return subprocess.run(
            argv, cwd=app, env=service_env(svc), capture_output=True, text=True, timeout=60
        )

    for name, svc in one_shot.items():  # the workers depend on it: it ends first
        argv = shlex.split(localise(svc["command"], pg_server, redis_server, flower_port))
        done = subprocess.run(
            argv, cwd=app, env=service_env(svc), capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"
        assert "granted SELECT, INSERT, UPDATE, DELETE to celery_worker" in done.stdout

    procs: dict[str, subprocess.Popen] = {}
    logs = {name: tmp_path / f"{name}.log" for name in services}
    try:
        for name, svc in services.items():  # compose starts them together
            argv = shlex.split(localise(svc["command"], pg_server, redis_server, flower_port))
            procs[name] = subprocess.Popen(
                argv,
                cwd=app,
                env=service_env(svc),
                stdout=logs[name].open("w"),
                stderr=subprocess.STDOUT,
            )
        workers = [n for n in services if n.startswith("worker")]

        def tail(name: str) -> str:
            return logs[name].read_text(errors="replace")[-3000:]

        for name in workers:
            wait_for(
                lambda n=name: "ready." in tail(n) or procs[n].poll() is not None,
                90,
                f"{name} to be ready",
                0.2,
            )
            assert procs[name].poll() is None, f"{name} died at start:\n{tail(name)}"
        for name in workers:
            check = run_check(services[name])
            assert check.returncode == 0, f"{name} healthcheck: {check.stdout}{check.stderr}"

        def masters() -> dict[str, list[str]] | None:
            done = subprocess.run(
                ["celery", "-A", "examples.production", "inspect", "master_status", "--json"],
                cwd=app,
                env=service_env(services["worker1"]),
                capture_output=True,
                text=True,
                timeout=60,
            )
            try:
                replies = json.loads(done.stdout)
            except json.JSONDecodeError:
                return None
            found: dict[str, list[str]] = {lock: [] for lock in LOCKS}
            for node, reply in replies.items():
                for lock, view in reply.get("ok", {}).items():
                    if view["role"] == "master":
                        found.setdefault(lock, []).append(node)
            return found if len(replies) == 3 and all(found[k] for k in LOCKS) else None

        found = wait_for(masters, 60, "a master of every lock name", 1.0)
        assert all(len(nodes) == 1 for nodes in found.values()), found
        assert database_roles(pg_server) == {"celery_worker"}, "workers elect as celery_worker"
        probe = subprocess.run(  # the cluster-wide check a CronJob would run in this image
            ["celery", "-A", "examples.production", "master", "status", "--check"],
            cwd=app,
            env=service_env(services["worker1"]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert probe.stdout.startswith(f"OK: {len(LOCKS)} lock name(s)"), probe.stdout

        # beat's first slot is one period (10 s) after the master's beat starts
        wait_for(
            lambda: any("periodic report" in logs[n].read_text() for n in workers),
            60,
            "beat to send report-every-10s and a worker to run it",
            0.5,
        )

        wait_for(
            lambda: run_check(services["flower"]).returncode == 0, 60, "flower's healthcheck", 0.5
        )
        url = f"http://127.0.0.1:{flower_port}/api/workers"
        assert get(url)[0] == 401, "Flower must ask for its basic auth"
        status, _body = get(url, SECRETS["FLOWER_BASIC_AUTH"])
        assert status == 200
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} died:\n{tail(name)}"
            assert "Traceback" not in logs[name].read_text(), tail(name)
    finally:
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 20
        for proc in procs.values():
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
