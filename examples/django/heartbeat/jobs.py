"""The master job: runs in a thread of its own on the elected worker only."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import close_old_connections, connection

from celery_master import MasterContext

from .models import Heartbeat

logger = logging.getLogger(__name__)


def record_heartbeats(ctx: MasterContext) -> None:
    """Write a row every HEARTBEAT_EVERY seconds until this worker stops being master.

    Django opens one connection per thread and closes stale ones only around
    requests: a long-lived job thread calls ``close_old_connections()`` around
    each unit of work (as Celery's Django fixup does around tasks), and closes
    its own connection when the term ends.
    """
    logger.warning("master of %s (epoch %d)", ctx.lock_name, ctx.epoch)
    try:
        while not ctx.stopping.wait(settings.HEARTBEAT_EVERY):
            close_old_connections()
            try:
                if ctx.is_master():  # no I/O: false the moment this term may have ended
                    Heartbeat.objects.create(holder=ctx.holder, epoch=ctx.epoch)
            except Exception as exc:  # a database blip: ride it out, show it, retry
                ctx.report_error(f"heartbeat not written: {exc}")
            else:
                ctx.report_error(None)
                ctx.alive(within=3 * settings.HEARTBEAT_EVERY)
            finally:
                close_old_connections()
    finally:
        connection.close()
