"""``celery -A APP master status|enable|disable|release|forget|history|migrate`` (``master``).

Works with no worker running: the state lives in the lease database. When a
broker is reachable a command that changes state also broadcasts a hint so
workers act at once.
"""

from __future__ import annotations

from . import schema, status, steer  # noqa: F401  (they register their commands on the group)
from .group import master

__all__ = ["master"]
