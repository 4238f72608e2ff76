"""The examples and docker-compose.yml say what the code does."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from celery_master.worker.registry import jobs_of

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
#: set by .ci/run, where the project's shared folder lies beside the clone: there a
#: missing schema is a broken checkout, never a reason to skip the validation
REQUIRE_SCHEMA = "COMPOSE_SCHEMA_REQUIRED"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_docker_compose_is_valid_against_the_compose_spec(compose):
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        if os.environ.get(REQUIRE_SCHEMA) == "1":
            pytest.fail(f"{REQUIRE_SCHEMA}=1 but the Compose schema {SCHEMA} is missing")
        pytest.skip(
            f"{SCHEMA} is missing: the Compose schema ships in the project's shared folder, "
            "which lies beside a CI checkout, not beside a user's clone "
            f"(CI sets {REQUIRE_SCHEMA}=1 so it cannot skip there)"
        )
    import json

    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    validator.validate(compose)
    broken = {**compose, "services": {**compose["services"], "bad": {"comand": "typo"}}}
    assert not validator.is_valid(broken), "the schema must catch a misspelt key"


def test_compose_runs_three_workers_and_flower_of_the_production_example(compose):
    services = compose["services"]
    assert {"postgres", "redis", "worker1", "worker2", "worker3", "flower"} <= set(services)
    for name in ("worker1", "worker2", "worker3", "flower"):
        words = shlex.split(services[name]["command"])
        assert words[:3] == ["celery", "-A", "examples.production"]
        module = importlib.import_module(words[2])
        assert hasattr(module, "app"), f"{words[2]} has no Celery app"
        if name.startswith("worker"):
            assert words[3] == "worker" and f"{name}@compose" in words
            check = services[name]["healthcheck"]["test"]
            assert f"{name}@compose" in check and "examples.production" in check
    for name in ("postgres", "redis", *(f"worker{i}" for i in (1, 2, 3)), "flower"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    env = services["worker1"]["environment"]
    assert "${WORKER_DB_PASSWORD:?" in env["CELERY_MASTER_DATABASE_URL"], "no password baked in"


def test_compose_gives_each_service_only_what_it_needs(compose):
    """Redis asks a password; workers use a role with rows only; the owner role migrates;
    Flower gets no database URL; images and Flower are pinned."""
    services = compose["services"]
    assert services["redis"]["command"][1:] == [
        "--requirepass",
        "${REDIS_PASSWORD:?set REDIS_PASSWORD (e.g. in .env)}",
    ]
    for name in ("worker1", "worker2", "worker3", "flower"):
        assert services[name]["environment"]["CELERY_BROKER_URL"].startswith(
            "redis://:${REDIS_PASSWORD:?"
        ), name
    for name in ("worker1", "worker2", "worker3"):
        url = services[name]["environment"]["CELERY_MASTER_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg2://celery_worker:"), url
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    migrate = services["migrate"]
    assert shlex.split(migrate["command"])[3:] == ["master", "migrate", "--grant", "celery_worker"]
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    assert migrate["environment"]["CELERY_MASTER_DATABASE_URL"].startswith(
        f"postgresql+psycopg2://{owner}:"
    )
    assert "CELERY_MASTER_DATABASE_URL" not in services["flower"]["environment"]
    assert set(services["flower"]["depends_on"]) == {"redis"}
    for name in ("postgres", "redis"):
        assert re.fullmatch(r"[\w.-]+:\d+\.\d+(\.\d+)?-\w+", services[name]["image"]), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-", dockerfile, re.M), "base image unpinned"
    assert re.search(r" flower==\d+\.\d+\.\d+", dockerfile), "flower unpinned"


def test_production_example_registers_beat_and_its_master_job():
    module = importlib.import_module("examples.production")
    assert [j.lock_name for j in jobs_of(module.app)] == ["FEED-POLLER"]
    assert module.app.conf.master_beat is True
    assert module.app.conf.beat_schedule["report-every-10s"]["task"] in module.app.tasks


def test_embedded_example_app_uses_absolute_filesystem_folders():
    module = importlib.import_module("examples.app")
    opts = module.app.conf.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        assert Path(opts[key]).is_absolute()
    assert opts["polling_interval"] == 0.1
    assert [j.lock_name for j in jobs_of(module.app)] == ["HEARTBEAT"]


def test_importing_the_example_app_creates_nothing_until_a_connection_opens(tmp_path: Path):
    """The CLI, Flower and the tests import app modules: that must not write to the disk."""
    probe = (
        "import os, examples.app as m; print(sorted(os.listdir('.')));"
        "ch = m.app.connection_for_write().default_channel;"
        "print(sorted(os.listdir('.demo')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "EXAMPLE_DATA_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "['broker', 'control']"]


def test_the_readme_first_screen_has_install_example_commands_and_ha_beat():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    for needed in (
        'pip install "celery-master[postgres]"',
        "celery_master.register(app,",
        "./scripts/demo",
        "./scripts/test",
        "app.conf.master_beat = True",
        "docs/ha-beat.md",
    ):
        assert needed in first_screen, f"{needed!r} is not in the README's first 60 lines"
