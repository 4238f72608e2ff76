"""Which app a worker belongs to, for everything several apps on one lease database share.

Lock names are global in the lease database (two apps may coordinate on
purpose through one name), so defaults derived from the app must not collide:
HA beat's default lock name is ``celery-beat:<app identity>``.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping
from typing import Any

__all__ = ["UNNAMED", "app_identity"]

logger = logging.getLogger(__name__)
UNNAMED = "__main__"
_warned: weakref.WeakSet[Any] = weakref.WeakSet()  # apps already warned about


def app_identity(app: Any, environ: Mapping[str, str] | None = None) -> str:
    """``master_app_name`` (env ``CELERY_MASTER_APP_NAME``), else ``app.main``.

    An app with neither (or ``__main__``) gets a warning once: unnamed apps on
    one database share their defaults (HA beat's lock name among them).
    """
    env = os.environ if environ is None else environ
    name = env.get("CELERY_MASTER_APP_NAME", "").strip() or app.conf.get("master_app_name")
    name = str(name or getattr(app, "main", None) or UNNAMED)
    if name == UNNAMED and app not in _warned:
        _warned.add(app)
        logger.warning(
            "this Celery app has no name (Celery(main=...)) and no master_app_name: unnamed "
            "apps on one lease database share defaults such as the HA beat lock name; "
            "set app.conf.master_app_name"
        )
    return name
