"""Every name the docs tell users to type resolves from the path the docs show; wings stay labelled.

The package was regrouped into wings (ops, worker, election, jobs, store):
what users import, configure or run must not have moved with it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import tomllib

import celery_master

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
DOTTED = re.compile(r"\bcelery_master((?:\.[A-Za-z_]\w*)+)(?::([A-Za-z_]\w*))?")
FROM_IMPORT = re.compile(r"from (celery_master[\w.]*) import ([\w, ]+)")
WINGS = ["ops", "worker", "election", "jobs", "store"]
# the names the issue that regrouped the package promised to keep, wherever the docs stand
PROMISED = [
    "celery_master.register",
    "celery_master.master_job",
    "celery_master.NotMaster",
    "celery_master.MasterContext",
    "celery_master.ConfigurationError",
    "celery_master.testing.master_cluster",
    "celery_master.transport:FilesystemTransport",
]


def resolve(path: str) -> object:
    """``a.b.c`` or ``a.b:c``: import the longest module prefix, then get the attributes."""
    module_path, _, attr = path.partition(":")
    parts = module_path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:] + ([attr] if attr else []):
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(path)


def documented_names() -> list[str]:
    names = set(PROMISED)
    for doc in DOCS:
        text = doc.read_text()
        for m in DOTTED.finditer(text):
            names.add("celery_master" + m.group(1) + (f":{m.group(2)}" if m.group(2) else ""))
        for m in FROM_IMPORT.finditer(text):
            names.update(f"{m.group(1)}:{n.strip()}" for n in m.group(2).split(",") if n.strip())
    return sorted(names)


@pytest.mark.parametrize("path", documented_names())
def test_every_documented_name_resolves_from_its_documented_path(path):
    assert resolve(path) is not None


def test_the_entry_points_resolve():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    cli = project["entry-points"]["celery.commands"]["master"]
    assert resolve(cli).name == "master"  # the click group behind `celery master`
    plugin = project["entry-points"]["pytest11"]["celery_master"]
    assert resolve(plugin) is importlib.import_module("celery_master.testing")


def test_public_api_lists_only_what_exists():
    for name in celery_master.__all__:
        assert getattr(celery_master, name) is not None


@pytest.mark.parametrize("wing", WINGS)
def test_each_wing_says_what_it_is_and_what_it_may_import(wing):
    doc = importlib.import_module(f"celery_master.{wing}").__doc__ or ""
    assert "May import:" in doc, f"celery_master/{wing}/__init__.py must state its import rule"


def test_no_module_of_the_package_holds_two_jobs_by_size():
    """STYLE.md: a module past ~300 lines is holding two jobs."""
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines())
        for p in (ROOT / "celery_master").rglob("*.py")
    }
    assert {p: n for p, n in sizes.items() if n > 320} == {}
