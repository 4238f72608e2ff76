"""The thin Celery worker step that runs the election in a worker, and ``install()``.

A *worker* step (not a consumer step): consumer steps are restarted whenever
the broker connection drops, and the election must not be. The wiring lives
in assemble.py; this step only starts and stops it at the right moments.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import click
from celery import Celery, bootsteps, signals

from ..errors import ConfigurationError
from ..jobs.beat.job import beat_settings
from . import summary
from .assemble import Assembly, assemble

__all__ = ["MasterStep", "install"]

logger = logging.getLogger(__name__)
_install_lock = threading.Lock()


class MasterStep(bootsteps.StartStopStep):
    """Starts the elector after the worker is built; hands leases over at shutdown."""

    label = "celery-master"

    def __init__(
        self, worker: Any, master_beat: bool = False, beat: bool = False, **kwargs: Any
    ) -> None:
        worker.master_elector = None
        worker.master_offload = None
        self.beat_on = beat_settings(worker.app.conf, True if master_beat else None)[0]
        if self.beat_on and beat:
            # refused here, while the worker is being built: the -B beat would start first
            raise ConfigurationError(
                "both -B/--beat and master_beat are on: beat would run twice; drop -B"
            )
        self.assembly: Assembly | None = None
        self.hostname: str | None = None
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        self.assembly = assemble(worker.app, worker.hostname, self.beat_on)
        if self.assembly is None:
            return
        self.hostname = worker.hostname
        _drop_pidbox_backlog(worker.app, worker.hostname)
        worker.master_elector = self.assembly.elector
        worker.master_offload = self.assembly.offload
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        self.assembly.start()

    def stop(self, worker: Any) -> None:
        signals.worker_shutting_down.disconnect(self._on_shutting_down)
        if self.assembly is not None:
            self.assembly.stop()
            self.assembly = None

    terminate = stop

    def info(self, worker: Any) -> dict[str, Any]:
        elector = getattr(worker, "master_elector", None)
        if elector is None:
            return {}
        view = elector.snapshot()
        return {
            "master": {"database": elector.describe_database(), **view},
            "master_summary": summary.render(view),
        }

    def _on_shutting_down(self, sender: Any = None, **kwargs: Any) -> None:
        """Sent from the SIGTERM handler: start the hand-over now, not 2-4 s later."""
        if self.assembly is not None and (sender is None or sender == self.hostname):
            self.assembly.elector.begin_handover()


def _drop_pidbox_backlog(app: Any, hostname: str) -> None:
    """Forget broadcasts queued while this node name was down.

    kombu's filesystem transport replays them to a restarted node; they are
    ephemeral in Celery's model, and the state they set is in SQL already.
    """
    name = f"{hostname}.{app.conf.control_exchange}.pidbox"
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            dropped = conn.default_channel.queue_purge(name)
        if dropped:
            logger.info("dropped %d stale broadcast(s) for %s", dropped, name)
    except Exception as exc:  # the queue may not exist yet; the broker may be down
        logger.debug("no pidbox backlog dropped (%s)", exc)


def install(app: Celery) -> None:
    """Add the worker step and the ``--master-beat`` worker option to ``app`` (idempotent).

    ``register()`` calls it; call it yourself in an app module that registers
    no job but wants ``celery worker --master-beat``.
    """
    from .broadcast import BroadcastStep  # imports control, which needs the app loaded

    with _install_lock:
        if MasterStep not in app.steps["worker"]:
            app.steps["worker"].add(MasterStep)
        app.steps["consumer"].add(BroadcastStep)  # a set: adding twice is a no-op
        options = app.user_options["worker"]
        if not any("--master-beat" in getattr(o, "opts", ()) for o in options):
            options.add(
                click.Option(
                    ["--master-beat"],
                    is_flag=True,
                    default=False,
                    help="Run celery beat on the elected master only (celery-master).",
                )
            )


@signals.celeryd_init.connect
def _install_for_beat(
    sender: Any = None, instance: Any = None, conf: Any = None, options: Any = None, **kwargs: Any
) -> None:
    """``app.conf.master_beat = True`` alone is enough: add the step before the worker is built."""
    app = getattr(instance, "app", None)
    if app is None:
        return
    option = True if (options or {}).get("master_beat") else None
    if beat_settings(app.conf, option)[0]:
        install(app)
