"""``celery master ...`` run in this process with click's runner, for tests that need no worker."""

from __future__ import annotations

import types
from typing import Any

from celery import Celery
from click.testing import CliRunner

from celery_master.ops.cli import master

__all__ = ["run_master"]


def run_master(database_url: str, *args: str, **conf: Any) -> types.SimpleNamespace:
    """(code, output) of ``celery -A APP master ARGS`` for an app on ``database_url``.

    The app's broker is ``memory://`` (no hint reaches a worker); ``conf`` sets
    more of its settings. ``output`` holds stdout and stderr together.
    """
    app = Celery("cli_test", broker="memory://", set_as_current=False)
    app.conf.update(master_database_url=database_url, **conf)
    result = CliRunner().invoke(master, list(args), obj=types.SimpleNamespace(app=app))
    return types.SimpleNamespace(code=result.exit_code, output=result.output)
