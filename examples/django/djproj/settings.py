"""Settings of the example Django project; the lease database is Django's own database.

Everything that varies comes from the environment, with defaults that run on
one machine: an SQLite database and kombu's filesystem broker folders under
``EXAMPLE_DATA_DIR`` (default: this project's folder). ``DATABASE_URL`` (an
SQLAlchemy URL, e.g. ``postgresql+psycopg2://user:pw@db/proj``) switches
Django and the leases to PostgreSQL together.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("EXAMPLE_DATA_DIR", BASE_DIR)).resolve()
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{DATA / 'db.sqlite3'}")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["django.contrib.contenttypes", "heartbeat"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def django_database(url: str) -> dict[str, object]:
    """Django's DATABASES entry for an SQLAlchemy URL: one URL for Django and the leases."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.database,
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.host or "",
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": 60,
    }


DATABASES = {"default": django_database(DATABASE_URL)}

# -- Celery (namespace CELERY) ------------------------------------------------
CELERY_BROKER_URL = os.environ.get("BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT = (
    "celery_master.transport:FilesystemTransport"  # kombu's, minus its races
    if CELERY_BROKER_URL == "filesystem://"
    else None
)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "data_folder_in": str(DATA / "broker"),
    "data_folder_out": str(DATA / "broker"),
    "control_folder": str(DATA / "control"),
    "store_processed": False,
    "polling_interval": 0.1,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# -- celery-master: app.conf.master_* -----------------------------------------
CELERY_MASTER_DATABASE_URL = DATABASE_URL  # the leases live in Django's database
CELERY_MASTER_APP_NAME = "djproj"
# CELERY_MASTER_BEAT = True  # HA beat; with django-celery-beat see docs/django.md

#: how often the master job writes its row (seconds)
HEARTBEAT_EVERY = float(os.environ.get("HEARTBEAT_EVERY", "5"))
