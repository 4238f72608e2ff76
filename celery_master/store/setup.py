"""Creating and upgrading the lease schema, and refusing one this code cannot use.

A worker that finds a schema it cannot use stays out of the election (the
elector catches ``SchemaError``) rather than write rows it cannot read:
``SchemaTooNew`` (upgrade celery-master on the worker), ``SchemaUnreadable``
(the ``schema_version`` row is not a version number), ``SchemaNeedsMigrate``
(the schema is missing or older, and this worker's database role may not
create or upgrade it: the owner runs ``celery master migrate``).

Schema ownership: the role that owns the lease tables creates and upgrades
them (``migrate``, which can also grant a workers' role the rows and nothing
more); a worker creates or upgrades them itself only where its role may.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.exc import DBAPIError

from ..errors import ConfigurationError
from .engine import Dialect
from .schema import SCHEMA_VERSION, add_missing_columns, missing_columns
from .tables import HISTORY, META, METADATA

__all__ = [
    "MIGRATE",
    "SchemaError",
    "SchemaNeedsMigrate",
    "SchemaSetup",
    "SchemaTooNew",
    "SchemaUnreadable",
]

logger = logging.getLogger(__name__)
MIGRATE = "celery -A APP master migrate"
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE


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


class SchemaNeedsMigrate(SchemaError):
    """The schema must be created or upgraded, and this database role may not do it."""


class SchemaSetup:
    """Mixed into LeaseStore."""

    engine: Engine
    dialect: Dialect

    def ensure_schema(self) -> list[str]:
        """Create missing tables and columns where this role may; returns what it changed.

        Refuses a schema newer than this code (``SchemaTooNew``), and one it
        would have to change but may not (``SchemaNeedsMigrate``, checked
        before any DDL, so a worker left out does not fill the server's log).
        """
        try:
            with self.engine.begin() as conn:
                return self._ensure_schema(conn)
        except DBAPIError as exc:
            orig = exc.orig
            if (getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)) != (
                INSUFFICIENT_PRIVILEGE
            ):
                raise
            raise SchemaNeedsMigrate(
                f"this database role may not use the lease tables ({str(orig).strip()[:200]}): "
                f"run `{MIGRATE} --grant ROLE` with the role that owns them"
            ) from None

    def _ensure_schema(self, conn: Connection) -> list[str]:
        if self.dialect is Dialect.POSTGRESQL:  # workers booting together: one creates
            conn.execute(text("SELECT pg_advisory_xact_lock(7275318)"))
        found = self._schema_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the lease database has celery-master schema version {found}, newer than "
                f"this version supports ({SCHEMA_VERSION}): upgrade celery-master on this "
                "worker (pip install -U celery-master)"
            )
        inspector = inspect(conn)
        tables = [t.name for t in METADATA.sorted_tables if not inspector.has_table(t.name)]
        self._may_change(conn, tables, sorted({t.name for t, _ in missing_columns(conn, METADATA)}))
        METADATA.create_all(conn, checkfirst=True)
        changes = [f"created {name}" for name in tables]
        for column in add_missing_columns(conn, METADATA):
            logger.warning("upgraded the lease database: added %s", column)
            changes.append(f"added {column}")
        if found is None:
            conn.execute(META.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif found < SCHEMA_VERSION:
            conn.execute(
                META.update()
                .where(META.c.key == "schema_version")
                .values(value=str(SCHEMA_VERSION))
            )
            logger.warning("upgraded the lease database schema %d -> %d", found, SCHEMA_VERSION)
            changes.append(f"schema version {found} -> {SCHEMA_VERSION}")
        return changes

    def _may_change(self, conn: Connection, tables: list[str], altered: list[str]) -> None:
        """Raise SchemaNeedsMigrate unless this role may create ``tables`` and alter ``altered``
        (PostgreSQL: CREATE on the schema, and owning the tables; SQLite has no roles)."""
        if self.dialect is not Dialect.POSTGRESQL or not (tables or altered):
            return
        role = conn.execute(text("SELECT current_user")).scalar()
        may_create = "SELECT coalesce(has_schema_privilege(current_schema(), 'CREATE'), false)"
        if tables and not conn.execute(text(may_create)).scalar():
            what = (
                "the lease tables do not exist"
                if len(tables) == len(METADATA.tables)
                else (f"the lease tables {', '.join(tables)} are missing")
            )
            raise SchemaNeedsMigrate(
                f"{what} and the database role {role!r} may not create them: run `{MIGRATE}` "
                "with the role that owns the lease schema (the worker joins by itself then)"
            )
        owns = (
            "SELECT coalesce(bool_and(pg_has_role(tableowner, 'USAGE')), true) FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename = ANY(:names)"
        )
        if altered and not conn.execute(text(owns), {"names": altered}).scalar():
            raise SchemaNeedsMigrate(
                f"the lease schema is older than this celery-master's ({SCHEMA_VERSION}: "
                f"{', '.join(altered)} need new columns) and the database role {role!r} may not "
                f"alter them: run `{MIGRATE}` with the role that owns the lease tables (the "
                "worker joins by itself then)"
            )

    def migrate(self, grant: str | None = None) -> list[str]:
        """Create or upgrade the schema (as its owner); ``grant``: the workers' role gets
        SELECT, INSERT, UPDATE, DELETE on the lease tables (and the history id sequence)."""
        changes = self.ensure_schema()
        if grant is None:
            return changes
        if self.dialect is not Dialect.POSTGRESQL:
            raise ConfigurationError(
                "--grant names a PostgreSQL role; an SQLite file has none (its file "
                "permissions decide who may write it)"
            )
        with self.engine.begin() as conn:
            quote = conn.dialect.identifier_preparer.quote
            names = ", ".join(quote(t.name) for t in METADATA.sorted_tables)
            conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {names} TO {quote(grant)}"))
            serial = "SELECT pg_get_serial_sequence(:table, 'id')"
            sequence = conn.execute(text(serial), {"table": HISTORY.name}).scalar()
            conn.execute(text(f"GRANT USAGE, SELECT ON SEQUENCE {sequence} TO {quote(grant)}"))
        return [*changes, f"granted SELECT, INSERT, UPDATE, DELETE to {grant}"]

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
