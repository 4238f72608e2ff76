"""Store: everything SQL (schema, leases, fence, history, beat state); no other wing knows SQL.

May import: the shared modules only (errors, redact, ...); every wing above may import it.
"""

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
