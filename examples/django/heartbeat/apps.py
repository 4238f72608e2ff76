"""Registers the master job once Django's models are loaded."""

from __future__ import annotations

from django.apps import AppConfig


class HeartbeatConfig(AppConfig):
    name = "heartbeat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """In ready(), not at import: the job uses models, and app modules import models."""
        from djproj.celery import app

        import celery_master

        from .jobs import record_heartbeats

        celery_master.register(app, "DJANGO-HEARTBEAT", record_heartbeats)
