"""The Celery app of the Django project: `celery -A djproj worker` from examples/django/.

``namespace="CELERY"``: Celery reads every ``CELERY_*`` name of settings.py,
drops the prefix and lowercases the rest, so ``CELERY_MASTER_DATABASE_URL``
is ``app.conf.master_database_url``. Master jobs are registered in
``heartbeat.apps.HeartbeatConfig.ready()``, once Django's models are loaded.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")

app = Celery("djproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
