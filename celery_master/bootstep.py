"""The thin Celery worker step that wires the elector into a worker.

A *worker* step (not a consumer step): consumer steps are restarted whenever
the broker connection drops, and the election must not be.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps, signals

from . import control, summary
from .beat.job import BeatJob, beat_settings
from .elector import Elector
from .errors import ConfigurationError
from .events import RoleEvents
from .holder import Holder
from .job import MasterJob
from .metrics import MasterMetrics
from .registry import jobs_of
from .settings import JobSettings, resolve_database_url, resolve_job_settings
from .store.engine import create_lease_engine, mask_url, sqlite_path
from .store.leases import LeaseStore

__all__ = ["MasterStep"]

logger = logging.getLogger("celery_master")


class MasterStep(bootsteps.StartStopStep):
    """Starts the elector after the worker is built; hands leases over at shutdown."""

    label = "celery-master"

    def __init__(
        self, worker: Any, master_beat: bool = False, beat: bool = False, **kwargs: Any
    ) -> None:
        worker.master_elector = None
        self.beat_on, self.beat_lock = beat_settings(worker.app.conf, True if master_beat else None)
        if self.beat_on and beat:
            # refused here, while the worker is being built: the -B beat would start first
            raise ConfigurationError(
                "both -B/--beat and master_beat are on: beat would run twice; drop -B"
            )
        self.elector: Elector | None = None
        self.hostname: str | None = None
        self.app: Any = None
        self.events: RoleEvents | None = None
        self.metrics: MasterMetrics | None = None
        self._hints: list[threading.Thread] = []
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        app = worker.app
        jobs = jobs_of(app)
        beat_on, beat_lock = self.beat_on, self.beat_lock
        if not jobs and not beat_on:
            return
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

        self.hostname, self.app = worker.hostname, app
        self._drop_pidbox_backlog()
        self.events = RoleEvents(app, worker.hostname)
        self.events.start()
        self.metrics = MasterMetrics.serve(app, lambda: self.elector)
        self.elector = Elector(
            store,
            pairs,
            Holder.for_node(worker.hostname),
            self._send_hint,
            on_role_change=self._role_changed,
        )
        worker.master_elector = self.elector
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        path = sqlite_path(url)
        logger.info(
            "celery-master: %d master job(s) %s; leases in %s%s",
            len(pairs),
            ", ".join(repr(j.lock_name) for j, _ in pairs),
            mask_url(url),
            f" (file {path})" if path else "",
        )
        self.elector.start()

    def stop(self, worker: Any) -> None:
        signals.worker_shutting_down.disconnect(self._on_shutting_down)
        if self.elector is not None:
            self.elector.stop()
            for thread in self._hints:
                thread.join(2.0)
            if self.events is not None:
                self.events.stop()
            if self.metrics is not None:
                self.metrics.stop()
                self.metrics = None
            self.elector = None

    terminate = stop

    def info(self, worker: Any) -> dict[str, Any]:
        elector = worker.master_elector
        if elector is None:
            return {}
        view = elector.snapshot()
        return {
            "master": {"database": elector.describe_database(), **view},
            "master_summary": summary.render(view),
        }

    def _role_changed(self, *change: Any) -> None:
        if self.events is not None:
            self.events(*change)
        if self.metrics is not None:
            self.metrics.role_changed(*change)

    def _on_shutting_down(self, sender: Any = None, **kwargs: Any) -> None:
        """Sent from the SIGTERM handler: start the hand-over now, not 2-4 s later."""
        if self.elector is not None and (sender is None or sender == self.hostname):
            self.elector.begin_handover()

    def _send_hint(self, lock_names: list[str]) -> None:
        """Tell the standbys a lease is free, from a thread and connection of our own."""
        thread = threading.Thread(
            target=control.broadcast_hint,
            args=(self.app, lock_names),
            name="celery-master-hint",
            daemon=True,
        )
        self._hints = [t for t in self._hints if t.is_alive()] + [thread]
        thread.start()

    def _drop_pidbox_backlog(self) -> None:
        """Forget broadcasts queued while this node name was down.

        kombu's filesystem transport replays them to a restarted node; they are
        ephemeral in Celery's model, and the state they set is in SQL already.
        """
        name = f"{self.hostname}.{self.app.conf.control_exchange}.pidbox"
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                dropped = conn.default_channel.queue_purge(name)
            if dropped:
                logger.info("celery-master: dropped %d stale broadcast(s) for %s", dropped, name)
        except Exception as exc:  # the queue may not exist yet; the broker may be down
            logger.debug("celery-master: no pidbox backlog dropped (%s)", exc)
