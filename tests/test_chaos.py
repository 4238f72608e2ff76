"""The short chaos soak (about a minute): never two masters, never a stale fenced write."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_chaos():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "bench" / "chaos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_soak_has_no_overlap_and_no_stale_fenced_write():
    report = load_chaos().main(["--duration", "50", "--fast", "--seed", "11", "--every", "3"])
    assert sum(report["faults"].values()) >= 5, report["faults"]
    assert report["overlaps"] == 0
    assert report["stale_fenced_writes_accepted"] == 0
    assert report["fenced_writes"] > 100, "the fenced path was exercised"
    assert report["worker_crashes"] == []
    assert report["lost_control_commands"] == 0
