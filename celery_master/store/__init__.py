"""Everything SQL; nothing outside this package knows a dialect."""

from __future__ import annotations

from .engine import create_lease_engine, mask_url
from .leases import LeaseStore, SchemaTooNew
from .rows import Lease, Member, MemberBeat, Renewal, TickResult

__all__ = [
    "Lease",
    "LeaseStore",
    "Member",
    "MemberBeat",
    "Renewal",
    "SchemaTooNew",
    "TickResult",
    "create_lease_engine",
    "mask_url",
]
