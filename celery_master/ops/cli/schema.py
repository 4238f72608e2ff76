"""``celery master migrate``: create or upgrade the lease schema, as the role that owns it.

Workers then need only their rows (``--grant ROLE`` gives a PostgreSQL role
SELECT, INSERT, UPDATE, DELETE on the lease tables and nothing else); a
worker that finds the schema missing or older and may not change it stays out
of the election, naming this command, and joins by itself once it has run.
"""

from __future__ import annotations

import click

from ...errors import ConfigurationError
from ...store.engine import mask_url
from ...store.schema import SCHEMA_VERSION
from ...store.setup import SchemaError
from .group import master, open_store, say

__all__ = ["migrate"]


@master.command()
@click.option(
    "--grant",
    metavar="ROLE",
    default=None,
    help="PostgreSQL role of the workers: SELECT, INSERT, UPDATE, DELETE on the lease tables.",
)
@click.pass_context
def migrate(ctx: click.Context, grant: str | None) -> None:
    """Create or upgrade the lease schema (run it with the role that owns the tables)."""
    store = open_store(ctx, create=False)
    try:
        changes = store.migrate(grant)
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    done = "; ".join(changes) if changes else "nothing to change"
    say(f"lease database {mask_url(store.engine.url)}: schema version {SCHEMA_VERSION} ({done})")
