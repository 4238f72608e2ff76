"""Creating and upgrading the lease schema, and refusing one this code cannot use.

A worker that finds a schema it cannot use stays out of the election (the
elector catches ``SchemaError``) rather than write rows it cannot read:
``SchemaTooNew`` (upgrade celery-master on the worker), ``SchemaUnreadable``
(the ``schema_version`` row is not a version number).
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, inspect, select, text

from ..errors import ConfigurationError
from .engine import Dialect
from .schema import SCHEMA_VERSION, add_missing_columns
from .tables import META, METADATA

__all__ = ["SchemaError", "SchemaSetup", "SchemaTooNew", "SchemaUnreadable"]

logger = logging.getLogger(__name__)


class SchemaError(ConfigurationError):
    """The lease schema keeps this worker out of the election; the message says the fix.

    ``fixed_in_database``: someone can fix it in the database while the worker
    runs, so the elector looks again; otherwise only a new worker version can.
    """

    fixed_in_database = True


class SchemaTooNew(SchemaError):
    """The lease database was upgraded by a newer celery-master than this one."""

    fixed_in_database = False


class SchemaUnreadable(SchemaError):
    """The ``schema_version`` row holds something that is not a version number."""


class SchemaSetup:
    """Mixed into LeaseStore."""

    engine: Engine
    dialect: Dialect

    def ensure_schema(self) -> None:
        """Create missing tables and columns; refuse a schema newer than this code."""
        with self.engine.begin() as conn:
            if self.dialect is Dialect.POSTGRESQL:  # workers booting together: one creates
                conn.execute(text("SELECT pg_advisory_xact_lock(7275318)"))
            found = self._schema_version(conn)
            if found is not None and found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the lease database has celery-master schema version {found}, newer than "
                    f"this version supports ({SCHEMA_VERSION}): upgrade celery-master on this "
                    "worker (pip install -U celery-master)"
                )
            METADATA.create_all(conn, checkfirst=True)
            for column in add_missing_columns(conn, METADATA):
                logger.warning("upgraded the lease database: added %s", column)
            if found is None:
                conn.execute(META.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif found < SCHEMA_VERSION:
                conn.execute(
                    META.update()
                    .where(META.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )
                logger.warning("upgraded the lease database schema %d -> %d", found, SCHEMA_VERSION)

    def read_schema_version(self) -> int | None:
        """The schema version in the database (None: no tables yet); creates nothing."""
        with self.engine.connect() as conn:
            return self._schema_version(conn)

    def _schema_version(self, conn: Connection) -> int | None:
        if not inspect(conn).has_table(META.name):
            return None
        value = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise SchemaUnreadable(
                f"the lease database's schema_version {value!r} (table {META.name}) is not a "
                f"version number: set it to the version its tables have ({SCHEMA_VERSION} for "
                "tables this celery-master created or upgraded)"
            ) from None
