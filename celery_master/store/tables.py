"""The tables of one lease database, and its clock as an SQL expression."""

from __future__ import annotations

from sqlalchemy import Float, MetaData, cast, func, literal
from sqlalchemy.sql import ColumnElement

from .engine import Dialect
from .schema import build_tables

__all__ = ["BEAT", "HISTORY", "LEASE", "MEMBER", "META", "METADATA", "db_now"]

METADATA = MetaData()
LEASE, META, HISTORY, BEAT, MEMBER = build_tables(METADATA)


def db_now(dialect: Dialect) -> ColumnElement[float]:
    """The database clock as float seconds (sub-second precision on both dialects)."""
    if dialect is Dialect.POSTGRESQL:
        # extract() is numeric (Decimal) on PostgreSQL 14+: float, as on SQLite
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    return (func.julianday("now") - literal(2440587.5)) * literal(86400.0)
