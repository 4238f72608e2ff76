"""The tables of celery-master, built by one function on a MetaData it owns.

Times are stored as float seconds since the epoch *read from the database
clock*, for people to read (lease left, history); no decision is ever taken
on them (see elector.py for the monotonic rules).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    inspect,
    text,
    true,
)

__all__ = [
    "MAX_LOCK_NAME",
    "SCHEMA_VERSION",
    "add_missing_columns",
    "build_tables",
    "missing_columns",
]

SCHEMA_VERSION = 2  # 2: lease.yielded_to/progress_at/progress_within, member.app/locks
MAX_LOCK_NAME = 200


def build_tables(metadata: MetaData) -> tuple[Table, Table, Table, Table, Table]:
    """Return (lease, meta, history, beat, member) tables registered on ``metadata``."""
    lease = Table(
        "celery_master_lease",
        metadata,
        Column("lock_name", String(MAX_LOCK_NAME), primary_key=True),
        Column("holder", String(255), nullable=True),
        Column("epoch", BigInteger, nullable=False, default=0, server_default="0"),
        Column("renewals", BigInteger, nullable=False, default=0, server_default="0"),
        Column("ttl", Float, nullable=True),
        Column("enabled", Boolean, nullable=False, default=True, server_default=true()),
        Column("release_requested", Boolean, nullable=False, default=False, server_default=false()),
        # freed by the spread for this holder: it (or a candidate under quota) takes it first,
        # any other worker that runs the lock only after a grace
        Column("yielded_to", String(255), nullable=True),
        # random per acquisition: a standby's (epoch, renewals) observation can never match a
        # later term even if a database that lost commits hands the same epoch out twice
        Column("token", String(32), nullable=True),
        Column("acquired_at", Float, nullable=True),
        Column("renewed_at", Float, nullable=True),
        Column("changed_at", Float, nullable=True),
        Column("changed_by", String(255), nullable=True),
        Column("reason", Text, nullable=True),
        # database time of the job's last ctx.alive() carried by a renewal, and how soon the
        # next one is due: monitoring only (celery master status --check)
        Column("progress_at", Float, nullable=True),
        Column("progress_within", Float, nullable=True),
    )
    meta = Table(
        "celery_master_meta",
        metadata,
        Column("key", String(64), primary_key=True),
        Column("value", String(255), nullable=False),
    )
    history = Table(
        "celery_master_history",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("lock_name", String(MAX_LOCK_NAME), nullable=False, index=True),
        Column("at", Float, nullable=False),
        Column("event", String(32), nullable=False),
        Column("holder", String(255), nullable=True),
        Column("epoch", BigInteger, nullable=True),
        Column("detail", Text, nullable=True),
    )
    beat = Table(
        "celery_master_beat",
        metadata,
        Column("lock_name", String(MAX_LOCK_NAME), primary_key=True),
        Column("name", String(255), primary_key=True),
        Column("last_run_at", Float, nullable=True),  # wall time of the last send (beat's clock)
        Column("total_run_count", BigInteger, nullable=False, default=0),
        Column("epoch", BigInteger, nullable=True),  # epoch of the master that wrote the row
    )
    member = Table(  # live workers, for spreading lock names; never used for safety
        "celery_master_member",
        metadata,
        Column("holder", String(255), primary_key=True),
        Column("node", String(255), nullable=False),
        Column("held", Integer, nullable=False, default=0),  # weight of the leases it holds
        Column("seen_at", Float, nullable=False),
        Column("app", String(255), nullable=False, default="", server_default=text("''")),
        # JSON {lock name: weight} of the lock names this worker runs: the spread's candidates
        Column("locks", Text, nullable=False, default="{}", server_default=text("'{}'")),
    )
    return lease, meta, history, beat, member


def missing_columns(conn: Connection, metadata: MetaData) -> list[tuple[Table, Column[Any]]]:
    """The columns that tables created by an older version lack (missing tables aside)."""
    inspector = inspect(conn)
    missing = []
    for table in metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing += [(table, column) for column in table.columns if column.name not in present]
    return missing


def add_missing_columns(conn: Connection, metadata: MetaData) -> list[str]:
    """The upgrade path: add the columns a table created by an older version lacks.

    Every column added after a release has a server default (or is nullable),
    so ``ALTER TABLE ... ADD COLUMN`` is enough and old rows stay valid. Called
    at start inside the schema transaction (serialised by an advisory lock on
    PostgreSQL, by the write lock on SQLite); returns what it added.
    """
    added = []
    for table, column in missing_columns(conn, metadata):
        ddl = column.type.compile(dialect=conn.dialect)
        default = ""
        if column.server_default is not None:
            arg = column.server_default.arg  # type: ignore[attr-defined]
            value = arg if isinstance(arg, str) else arg.compile(dialect=conn.dialect)
            default = f" DEFAULT {value}"
        null = "" if column.nullable or not default else " NOT NULL"
        conn.exec_driver_sql(
            f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {ddl}{default}{null}'
        )
        added.append(f"{table.name}.{column.name}")
    return added
