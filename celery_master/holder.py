"""Who holds a lease: one worker *instance*, not one node name.

A worker restarted under the same node name gets a new instance id, so it can
never mistake the lease of its previous life for its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

__all__ = ["MAX_HOLDER", "Holder"]

MAX_HOLDER = 255  # the holder columns of the lease and member tables


@dataclass(frozen=True)
class Holder:
    node_name: str
    pid: int = field(default_factory=os.getpid)
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def for_node(cls, node_name: str | None = None) -> Holder:
        return cls(node_name or f"celery@{socket.gethostname()}")

    def __str__(self) -> str:
        """Fits the 255-character holder column whatever the node name's length."""
        tail = f":{self.pid}:{self.instance_id}"
        return self.node_name[: MAX_HOLDER - len(tail)] + tail

    @staticmethod
    def node_of(holder: str | None) -> str | None:
        """The node name part of a stored holder string (for display)."""
        if not holder:
            return None
        return holder.rsplit(":", 2)[0]
