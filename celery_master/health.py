"""The lease database's health as the elector sees it: back-off, and one log line per change."""

from __future__ import annotations

import logging

from sqlalchemy.engine import URL
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from .redact import mask_url, redact, url_secrets

__all__ = ["MAX_BACKOFF", "DatabaseHealth", "first_line"]

logger = logging.getLogger(__name__)
MAX_BACKOFF = 2.0  # a standby polling a dead database costs little; recovery is fast


class DatabaseHealth:
    def __init__(self, url: str | URL, base: float) -> None:
        self.url = mask_url(url)
        self.secrets = url_secrets(url)  # a driver's message may repeat the password
        self.base = base
        self.backoff = base
        self.down = False
        self.error: str | None = None

    def failed(self, exc: Exception) -> None:
        """Back off; log the transition to failing once, never every retry."""
        self.backoff = min(max(MAX_BACKOFF, self.base), self.backoff * 2)
        detail = first_line(exc, self.secrets)
        state = "unreachable" if isinstance(exc, OperationalError | InterfaceError) else "failing"
        self.error = f"lease database {state}: {detail}"
        if not self.down:
            self.down = True
            logger.warning(
                "lease database %s %s (%s); retrying with backoff", self.url, state, detail
            )

    def ok(self) -> None:
        self.backoff = self.base
        self.error = None
        if self.down:
            self.down = False
            logger.warning("lease database %s reachable again", self.url)

    @staticmethod
    def is_db_error(exc: BaseException) -> bool:
        return isinstance(exc, SQLAlchemyError)


def first_line(exc: BaseException, secrets: tuple[str, ...], limit: int = 200) -> str:
    """The first line of a driver's (or SQLAlchemy's) message, without the database's secrets."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact(lines[0] if lines else type(exc).__name__, secrets)[:limit]
