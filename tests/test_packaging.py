"""What `pip install celery-master` gives: a typed package, its license, extras and floors.

Each check installs the built wheel into a clean virtualenv (no editable
install, no source tree on the path), the way users get it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import celery_master
from tests.support.cluster import wait_for

ROOT = Path(__file__).resolve().parents[1]

#: every extra, and the modules it must make importable
EXTRAS: dict[str, list[str]] = {
    "postgres": ["psycopg2"],
    "psycopg": ["psycopg", "psycopg_binary"],
    "redis": ["redis", "kombu.transport.redis"],
    "prometheus": ["prometheus_client"],
    "test": [
        "pytest",
        "pytest_timeout",
        "pytest_postgresql",
        "pytest_celery",
        "psycopg2",
        "psycopg",
        "kombu.transport.redis",
        "yaml",
        "flower",
        "jsonschema",
        "prometheus_client",
        "django",
    ],
    "dev": ["ruff", "mypy"],
    "bench": ["matplotlib", "psycopg2", "kombu.transport.redis"],
}
#: the oldest releases the package declares it runs on (pyproject.toml)
FLOORS = ["celery==5.3.0", "kombu==5.3.0", "SQLAlchemy==2.0.0"]  # click: celery 5.3 needs more

pytestmark = pytest.mark.timeout(600)


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    """Run a command away from this source tree, so ``python -c`` imports the installed wheel."""
    out = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd or tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONPATH": ""},
    )
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def make_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT)
    (built,) = out.glob("celery_master-*.whl")
    return built


@pytest.fixture(scope="module")
def extras_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One clean venv with the wheel and every extra (each extra's imports are checked apart)."""
    python = make_venv(tmp_path_factory.mktemp("extras") / "venv")
    run(python, "-m", "pip", "install", "-q", f"{wheel}[{','.join(EXTRAS)}]", timeout=600)
    return python


def test_the_wheel_ships_py_typed_the_license_and_its_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        license_text = whl.read(license_file).decode()
        (meta_file,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(whl.read(meta_file).decode())
        (entry_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = whl.read(entry_file).decode()
    assert "celery_master/py.typed" in names
    assert license_text.startswith("MIT License")
    assert meta["License-Expression"] == "MIT"
    assert meta["Version"] == celery_master.__version__
    classifiers = meta.get_all("Classifier")
    assert {"Framework :: Celery", "Typing :: Typed"} <= set(classifiers)
    assert {f"Programming Language :: Python :: 3.{v}" for v in (10, 11, 12, 13)} <= set(
        classifiers
    )
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Source", "Changelog"}
    assert "[pytest11]\ncelery_master = celery_master.testing" in entry_points
    assert not [n for n in names if n.startswith(("tests/", "examples/", "bench/"))]
    linters = [r for r in meta.get_all("Requires-Dist") if r.startswith(("ruff", "mypy"))]
    assert linters and all('extra == "dev"' in r for r in linters), linters


def test_every_extra_installs_in_a_clean_venv_and_imports(extras_python: Path):
    probe = textwrap.dedent(
        """
        import importlib, json, sys
        failed = {}
        for extra, modules in json.loads(sys.argv[1]).items():
            for name in modules:
                try:
                    importlib.import_module(name)
                except Exception as exc:
                    failed.setdefault(extra, []).append(f"{name}: {exc!r}")
        import psycopg, celery_master, celery_master.ops.cli, celery_master.testing
        print(json.dumps({"failed": failed, "psycopg": psycopg.pq.__impl__,
                          "version": celery_master.__version__, "path": celery_master.__file__}))
        """
    )
    import json

    report = json.loads(run(extras_python, "-c", probe, json.dumps(EXTRAS)))
    assert report["failed"] == {}
    assert report["psycopg"] == "binary"  # psycopg[binary]: no system libpq needed
    assert report["version"] == celery_master.__version__
    assert "site-packages" in report["path"]  # the wheel, not this source tree
    assert "master" in run(extras_python.parent / "celery", "--help")


USER_PROJECT = '''
"""A user's app module, typed."""
from __future__ import annotations

from celery import Celery

import celery_master
from celery_master import MasterContext, NotMaster
from celery_master.testing import MasterCluster


app = Celery("proj")


def start(ctx: MasterContext) -> None:
    epoch: int = ctx.epoch
    while not ctx.stopping.wait(1.0) and ctx.is_master():
        ctx.alive(within=5.0)
    ctx.report_error(None if epoch else "no epoch")


job: celery_master.MasterJob = celery_master.register(app, "POLLER", start, check_interval=5)


@celery_master.master_job(app, "WARMER")
def warm(ctx: MasterContext) -> None:
    try:
        ctx.fence(object())
    except NotMaster as exc:
        print(exc)


def elected(cluster: MasterCluster) -> str:
    return cluster.wait_for_master("POLLER").hostname
'''


def test_a_user_project_type_checks_against_the_installed_package(
    extras_python: Path, tmp_path: Path
):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "app.py").write_text(USER_PROJECT)
    (project / "mypy.ini").write_text(
        "[mypy]\nstrict = True\n\n[mypy-celery.*]\nignore_missing_imports = True\n"
    )
    run(extras_python, "-m", "mypy", "app.py", cwd=project)

    (project / "app.py").write_text(
        USER_PROJECT + "\ncelery_master.register(app, 42, start)\nbad: str = job.lock_name + 1\n"
    )
    out = subprocess.run(
        [extras_python, "-m", "mypy", "app.py"], cwd=project, capture_output=True, text=True
    )
    assert out.returncode == 1, out.stdout
    assert 'Argument 2 to "register" has incompatible type "int"; expected "str"' in out.stdout
    assert 'Unsupported operand types for + ("str" and "int")' in out.stdout


FLOOR_APP = '''
"""A worker on the dependency floors: filesystem broker (our transport), SQLite leases."""
import os
from pathlib import Path

from celery import Celery
import celery_master

DATA = Path(os.environ["FLOOR_DATA"])
app = Celery("floor")
app.conf.update(
    broker_url="filesystem://",
    broker_transport="celery_master.transport:FilesystemTransport",
    broker_transport_options={
        "data_folder_in": str(DATA / "broker"),
        "data_folder_out": str(DATA / "broker"),
        "control_folder": str(DATA / "control"),
        "polling_interval": 0.1,
    },
    master_database_url=f"sqlite:///{DATA / 'leases.sqlite3'}",
    master_init_delay=0.2,
    master_check_interval=0.5,
    master_heartbeat_interval=0.5,
    master_max_heartbeat_retry_count=2,
)


def start(ctx):
    (DATA / f"started-{ctx.epoch}").touch()


celery_master.register(app, "FLOOR", start)
'''


PARSE_ERROR = """
import sys
from celery_master.store.engine import parse_url
try:
    parse_url(sys.argv[1])
except Exception as exc:
    print(exc)
"""


def test_the_declared_floors_run_a_worker_that_elects_and_hands_over(wheel: Path, tmp_path: Path):
    """kombu 5.3.0 lacks ``Channel._exchange_file`` (5.7): the transport must not need it."""
    python = make_venv(tmp_path / "venv")
    run(python, "-m", "pip", "install", "-q", *FLOORS, timeout=600)
    run(python, "-m", "pip", "install", "-q", "--no-deps", wheel)
    versions = run(
        python, "-c", "import celery, kombu; print(celery.__version__, kombu.__version__)"
    )
    assert versions.split() == ["5.3.0", "5.3.0"]
    # SQLAlchemy 2.0.0-2.0.40 repeat a URL they cannot parse in their message
    said = run(python, "-c", PARSE_ERROR, "celery:hunter2@db/x")
    assert "not a database URL" in said and "hunter2" not in said, said
    (tmp_path / "floor_app.py").write_text(FLOOR_APP)
    data = tmp_path / "data"
    env = {**os.environ, "FLOOR_DATA": str(data), "PYTHONPATH": str(tmp_path)}
    env = {k: v for k, v in env.items() if not k.startswith(("CELERY_", "CELERY_MASTER_"))}
    log = (tmp_path / "worker.log").open("w")
    argv = ["-m", "celery", "-A", "floor_app", "worker", "-P", "solo", "-n", "floor@%h"]
    worker = subprocess.Popen(
        [str(python), *argv, "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (data / "started-1").exists(), 60, "the floor worker to become master")
        probe = (
            "import sys; from celery_master.store import LeaseStore, create_lease_engine; "
            "s = LeaseStore(create_lease_engine(sys.argv[1])); "
            "print(*[h['event'] for h in s.history('FLOOR')])"
        )
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        url = f"sqlite:///{data / 'leases.sqlite3'}"
        history = run(python, "-c", probe, url, cwd=tmp_path).split()
        assert history == ["released", "acquired"]
        assert worker.returncode == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        log.close()
    text = (tmp_path / "worker.log").read_text()
    assert "Unrecoverable error" not in text and "Traceback" not in text, text[-3000:]
