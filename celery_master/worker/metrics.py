"""Prometheus metrics of one worker's elections, served on ``/metrics`` from its main process.

Off by default; on with the setting ``master_metrics_port`` (environment
``CELERY_MASTER_METRICS_PORT``) and the optional extra
``celery-master[prometheus]``. The worker step starts it in the worker's main
process, where the elector runs; prefork children never run worker steps, so
they never bind the port. A port that is taken is logged once and the worker
goes on: metrics never stop a worker.

Counters move from the elector's callbacks (``role_changed``, ``tick``) and
from Celery's ``before_task_publish`` signal (beat sends carry the
``celery_master_lock_name`` header); gauges are read from
``elector.snapshot()`` when Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from celery import signals

from ..errors import ConfigurationError
from .scrape import ScrapeServer

__all__ = ["MasterMetrics", "metrics_address", "metrics_port"]

logger = logging.getLogger(__name__)
BEAT_HEADER = "celery_master_lock_name"
MAX_REASON_LABEL = 40


def _setting(conf: Any, name: str, environ: Mapping[str, str] | None) -> tuple[Any, str]:
    env = os.environ if environ is None else environ
    key = f"CELERY_MASTER_{name.upper()}"
    if env.get(key, "").strip():
        return env[key].strip(), f"environment variable {key}"
    return conf.get(f"master_{name}"), f"app.conf.master_{name}"


def metrics_port(conf: Any, environ: Mapping[str, str] | None = None) -> int | None:
    """``master_metrics_port``: None (off, the default) or a TCP port number."""
    raw, source = _setting(conf, "metrics_port", environ)
    if raw is None or raw == "":
        return None
    try:
        port = int(raw)
    except (TypeError, ValueError):
        port = -1
    if isinstance(raw, bool) or not 0 < port < 65536:
        raise ConfigurationError(
            f"{source} ({raw!r}) must be a TCP port number between 1 and 65535, "
            "or unset to serve no metrics"
        )
    return port


def metrics_address(conf: Any, environ: Mapping[str, str] | None = None) -> str:
    """``master_metrics_address``: the interface to listen on (all of them by default)."""
    raw, _source = _setting(conf, "metrics_address", environ)
    return str(raw) if raw else "0.0.0.0"


def reason_label(reason: str) -> str:
    """A bounded label value: the kind of step-down, without node names or counts."""
    head = reason.split(":", 1)[0].strip()
    words = [w for w in head.split() if not w.isdigit()]
    return " ".join(words)[:MAX_REASON_LABEL] or "unknown"


class MasterMetrics:
    """One worker's metrics, on a registry of their own (the default registry stays the user's)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.elector: Any = None  # set once built; the gauges read its snapshot at scrape time
        self.elections = Counter(
            "celery_master_elections",
            "Times this worker became master of a lock name.",
            ["lock_name"],
            registry=self.registry,
        )
        self.step_downs = Counter(
            "celery_master_step_downs",
            "Times this worker stopped being master of a lock name, by kind of reason.",
            ["lock_name", "reason"],
            registry=self.registry,
        )
        self.renewal_failures = Counter(
            "celery_master_renewal_failures",
            "Election round trips to the lease database that failed.",
            registry=self.registry,
        )
        self.renewal_seconds = Histogram(
            "celery_master_renewal_seconds",
            "Duration of the election's successful round trips to the lease database.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.beat_sends = Counter(
            "celery_master_beat_sends",
            "Tasks sent by the HA beat running in this worker.",
            ["lock_name"],
            registry=self.registry,
        )
        self.registry.register(_RoleCollector(lambda: self.elector))
        self._server: ScrapeServer | None = None

    # -- callbacks (elector thread, Celery's publishing threads) -------------------
    def role_changed(self, lock_name: str, role: Any, epoch: int, reason: str) -> None:
        if str(getattr(role, "value", role)) == "master":
            self.elections.labels(lock_name).inc()
        else:
            self.step_downs.labels(lock_name, reason_label(reason)).inc()

    def fan_out(
        self, other: Callable[[str, Any, int, str], None]
    ) -> Callable[[str, Any, int, str], None]:
        """One ``on_role_change`` callback: ``other`` (e.g. the events), then these counters."""

        def both(lock_name: str, role: Any, epoch: int, reason: str) -> None:
            try:
                other(lock_name, role, epoch, reason)
            finally:
                self.role_changed(lock_name, role, epoch, reason)

        return both

    def tick(self, seconds: float, ok: bool) -> None:
        if ok:
            self.renewal_seconds.observe(seconds)
        else:
            self.renewal_failures.inc()

    def _on_publish(self, sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        lock_name = (headers or {}).get(BEAT_HEADER)
        if lock_name:
            self.beat_sends.labels(str(lock_name)).inc()

    # -- serving -------------------------------------------------------------------
    def start(self, port: int, address: str = "0.0.0.0") -> bool:
        """Serve /metrics (see scrape.py for the bounds); False (logged once) when the port
        cannot be bound."""
        signals.before_task_publish.connect(self._on_publish, weak=False)
        try:
            self._server = ScrapeServer(self.registry, address, port)
        except OSError as exc:
            logger.error(
                "metrics not served: cannot listen on %s:%d (%s); set master_metrics_port "
                "(CELERY_MASTER_METRICS_PORT) to a free port. The worker goes on.",
                address,
                port,
                exc.strerror or exc,
            )
            return False
        self._server.start()
        logger.info("metrics on http://%s:%d/metrics", address, port)
        return True

    def stop(self) -> None:
        signals.before_task_publish.disconnect(self._on_publish)
        if self._server is not None:
            self._server.stop()
            self._server = None

    @classmethod
    def serve(cls, app: Any, environ: Mapping[str, str] | None = None) -> MasterMetrics | None:
        """What the worker step calls: None when off; refuses a missing prometheus_client."""
        port = metrics_port(app.conf, environ)
        if port is None:
            return None
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "master_metrics_port is set but prometheus_client is not installed: "
                "pip install 'celery-master[prometheus]'"
            ) from None
        metrics = cls()
        metrics.start(port, metrics_address(app.conf, environ))
        return metrics


class _RoleCollector:
    """Gauges read from ``elector.snapshot()`` at scrape time (no I/O there either)."""

    def __init__(self, elector: Callable[[], Any]) -> None:
        self._elector = elector

    def describe(self) -> list[Any]:
        return []  # unchecked: the lock names are known only at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        is_master = GaugeMetricFamily(
            "celery_master_is_master",
            "1 if this worker is master of the lock name.",
            None,
            ["lock_name"],
        )
        epoch = GaugeMetricFamily(
            "celery_master_epoch", "Epoch of this worker's term (master only).", None, ["lock_name"]
        )
        left = GaugeMetricFamily(
            "celery_master_lease_remaining_seconds",
            "Seconds until the master stops its job unless a renewal succeeds (0 if not master).",
            None,
            ["lock_name"],
        )
        elector = self._elector()
        view = elector.snapshot() if elector is not None else {}
        for name, lock in sorted(view.items()):
            master = lock.get("role") == "master"
            is_master.add_metric([name], 1.0 if master else 0.0)
            if lock.get("epoch") is not None:
                epoch.add_metric([name], float(lock["epoch"]))
            left.add_metric([name], _remaining(elector, name, lock) if master else 0.0)
        yield from (is_master, epoch, left)


def _remaining(elector: Any, lock_name: str, view: Mapping[str, Any]) -> float:
    """Seconds left of the master's term on its own clock (what self-stoppage counts down)."""
    if view.get("lease_left") is not None:
        return float(view["lease_left"])
    lock = elector.locks.get(lock_name)
    ctx = getattr(getattr(lock, "runner", None), "ctx", None)
    if ctx is None:
        return 0.0
    return max(0.0, float(ctx.deadline) - float(elector.clock()))
