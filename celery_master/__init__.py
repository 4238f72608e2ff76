"""celery-master: elect one Celery worker per lock name to run a master job.

Public API::

    celery_master.register(app, "JOB-SCHEDULER", start, stop, check_interval=5)

``start(ctx)`` and ``stop(ctx)`` receive a :class:`MasterContext`. Errors:
see :mod:`celery_master.errors`.
"""

from __future__ import annotations

from .api import install, master_job, register
from .errors import CeleryMasterError, ConfigurationError, NotMaster
from .jobs.job import MasterContext, MasterJob
from .worker import control as _control  # noqa: F401  (remote-control commands exist on import)

__all__ = [
    "CeleryMasterError",
    "ConfigurationError",
    "MasterContext",
    "MasterJob",
    "NotMaster",
    "install",
    "master_job",
    "register",
]
__version__ = "0.2.0.dev0"
