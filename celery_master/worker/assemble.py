"""Builds what one worker runs (elector, events, hints) from its app: the step stays thin.

Plain functions and one small class, so the wiring is testable without a
worker: ``assemble(app, hostname, beat_on)`` returns None when the app has
nothing to elect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..election.elector import Elector
from ..errors import ConfigurationError
from ..holder import Holder
from ..identity import app_identity
from ..jobs.beat.job import BeatJob, beat_settings
from ..jobs.job import MasterJob
from ..settings import JobSettings, resolve_database_url, resolve_job_settings
from ..store.engine import create_lease_engine, mask_url, sqlite_path
from ..store.leases import LeaseStore
from .events import RoleEvents
from .hints import HintSender
from .metrics import MasterMetrics
from .offload import Offload
from .registry import jobs_of

__all__ = ["LEGACY_BEAT_LOCK", "Assembly", "assemble"]

logger = logging.getLogger(__name__)
LEGACY_BEAT_LOCK = "celery-beat"  # HA beat's default lock name before app identities


@dataclass
class Assembly:
    elector: Elector
    events: RoleEvents
    hints: HintSender
    offload: Offload
    stoppers: list[Callable[[], None]] = field(default_factory=list)

    def start(self) -> None:
        self.hints.start()
        self.events.start()
        self.elector.start()

    def stop(self) -> None:
        self.elector.stop()
        self.offload.shutdown()
        self.hints.stop()
        self.events.stop()
        for stop in self.stoppers:
            stop()


def assemble(app: Any, hostname: str, beat_on: bool) -> Assembly | None:
    jobs = jobs_of(app)
    if not jobs and not beat_on:
        return None
    identity = app_identity(app)
    _, beat_lock = beat_settings(app.conf, beat_on, identity=identity)
    if beat_on and beat_lock in {j.lock_name for j in jobs}:
        raise ConfigurationError(
            f"master_beat_lock_name {beat_lock!r} is also a registered lock name: rename one"
        )
    url = resolve_database_url(app.conf)
    pairs: list[tuple[MasterJob, JobSettings]] = [
        (job, resolve_job_settings(app.conf, job.options)) for job in jobs
    ]
    beat_timing = resolve_job_settings(app.conf, {})
    finest = min(s.heartbeat_interval for s in [beat_timing, *(s for _, s in pairs)])
    store = LeaseStore(create_lease_engine(url, timeout=finest))
    if beat_on:
        pairs.append((BeatJob(app, beat_lock, store).as_job(), beat_timing))
    hints = HintSender(app)
    events = RoleEvents(app, hostname)
    metrics = MasterMetrics.serve(app)  # None unless master_metrics_port is set
    elector = Elector(
        store,
        pairs,
        Holder.for_node(hostname),
        hints,
        on_role_change=events if metrics is None else metrics.fan_out(events),
        on_tick=None if metrics is None else metrics.tick,
        app_name=identity,
        on_setup=_legacy_beat_check(beat_lock) if beat_on else None,
    )
    events.roles = elector.snapshot
    if metrics is not None:
        metrics.elector = elector
    path = sqlite_path(url)
    logger.info(
        "%d master job(s) %s of app %r; leases in %s%s",
        len(pairs),
        ", ".join(repr(j.lock_name) for j, _ in pairs),
        identity,
        mask_url(url),
        f" (file {path})" if path else "",
    )
    stoppers = [metrics.stop] if metrics is not None else []
    return Assembly(elector, events, hints, Offload(store), stoppers)


def _legacy_beat_check(beat_lock: str) -> Callable[[LeaseStore], None]:
    """Warn when the pre-identity ``celery-beat`` lease is live: a rolling upgrade runs 2 beats."""

    def check(store: LeaseStore) -> None:
        if beat_lock == LEGACY_BEAT_LOCK:
            return
        lease = store.read([LEGACY_BEAT_LOCK]).get(LEGACY_BEAT_LOCK)
        if lease is not None and lease.holder is not None and (lease.lease_left or 0) > 0:
            logger.warning(
                "a live worker (%s) holds the HA beat lock %r of an older celery-master, while "
                "this worker's beat lock is %r: both would run beat during a rolling upgrade; "
                "set master_beat_lock_name = %r on every worker to keep one beat",
                Holder.node_of(lease.holder),
                LEGACY_BEAT_LOCK,
                beat_lock,
                LEGACY_BEAT_LOCK,
            )

    return check
