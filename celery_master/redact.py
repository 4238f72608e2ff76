"""What a person sees never holds a database password: URLs masked for logs, stats and the CLI."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["MASK", "mask_url"]

SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword", "secret", "token")
MASK = "***"


def mask_url(url: str | URL) -> str:
    """The URL with its password hidden, in the userinfo and the query; safe for logs and stats.

    A URL that cannot be parsed is never returned as it is (it may hold a
    password where a parser would not look): its userinfo, path and query
    are hidden, only the scheme and host stay.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return _mask_unparsed(str(url))
    query = {
        k: (MASK if any(s in k.lower() for s in SECRET_QUERY_KEYS) else v)
        for k, v in parsed.query.items()
    }
    rendered = parsed.set(query=query).render_as_string(hide_password=True)
    return rendered.replace("%2A%2A%2A", MASK)


def _mask_unparsed(text: str) -> str:
    if "://" not in text:
        return f"{MASK} (not a URL)"
    scheme, rest = text.split("://", 1)
    host = rest.rsplit("@", 1)[1] if "@" in rest else rest
    host = host.split("/", 1)[0].split("?", 1)[0]
    userinfo = f"{MASK}@" if "@" in rest else ""
    return f"{scheme}://{userinfo}{host}/{MASK}"
