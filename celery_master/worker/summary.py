"""One readable line of a worker's roles, for people: Flower's worker page and ``inspect stats``.

``inspect stats`` keeps the ``master`` dict as the machine contract; Flower
shows unknown stats keys as text or as a Python repr, so a person reads this
line instead, e.g. ``master of A (epoch 3, since 12:01:02Z), B (epoch 1, since
12:04:10Z); standby for C; disabled: D``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render"]


def _since(value: Any) -> str | None:
    """``2026-11-26T12:01:02Z`` -> ``12:01:02Z``: the day is rarely what a person looks for."""
    if not value:
        return None
    text = str(value)
    return text.split("T", 1)[1] if "T" in text else text


def _master(name: str, view: Mapping[str, Any]) -> str:
    details = []
    if view.get("epoch") is not None:
        details.append(f"epoch {view['epoch']}")
    since = _since(view.get("since"))
    if since:
        details.append(f"since {since}")
    if view.get("job_error"):
        details.append(f"job error: {view['job_error']}")
    return f"{name} ({', '.join(details)})" if details else name


def render(snapshot: Mapping[str, Any]) -> str:
    """``elector.snapshot()`` as one line; entries that are not lock views are skipped."""
    locks = {
        name: view
        for name, view in sorted(snapshot.items())
        if isinstance(view, Mapping) and "role" in view
    }
    masters = [_master(n, v) for n, v in locks.items() if v["role"] == "master"]
    standby = [n for n, v in locks.items() if v["role"] == "standby"]
    disabled = [n for n, v in locks.items() if v["role"] == "disabled"]
    parts = []
    if masters:
        parts.append("master of " + ", ".join(masters))
    if standby:
        parts.append("standby for " + ", ".join(standby))
    if disabled:
        parts.append("disabled: " + ", ".join(disabled))
    errors = [f"{n}: {v['last_error']}" for n, v in locks.items() if v.get("last_error")]
    if errors:
        parts.append("errors: " + "; ".join(errors))
    return "; ".join(parts) if parts else "no master jobs"
