"""Everything SQL; nothing outside this package knows a dialect."""

from __future__ import annotations

from .engine import create_lease_engine, mask_url
from .leases import Lease, LeaseStore

__all__ = ["Lease", "LeaseStore", "create_lease_engine", "mask_url"]
