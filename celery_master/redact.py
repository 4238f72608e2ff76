"""What a person sees never holds a database password: URLs masked, secrets cut out of messages.

Two tools: ``mask_url`` shows a URL with every secret in it hidden (the
password of its userinfo, secret query keys, the password inside a ``dsn=``
value); ``redact`` cuts the secrets of the configured URL (``url_secrets``:
each in every form a message may carry it, as written, decoded and
percent-encoded) out of text we did not write, such as a driver's or
SQLAlchemy's error message, and keeps the rest of the diagnostic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from sqlalchemy.engine import URL

__all__ = ["MASK", "mask_url", "redact", "url_secrets", "userinfo"]

SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "sslpassword", "secret", "token")
DSN_KEYS = ("dsn",)  # a libpq connection string or URI handed to the driver as it is
MASK = "***"
#: a secret shorter than this is cut out of text only where it stands alone (not inside a
#: word), so that a two-letter password does not blank every word that contains its letters
SHORT_SECRET = 4
_DSN_PASSWORD = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)""", re.IGNORECASE)


def _render(url: str | URL) -> str:
    return url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)


def _split(text: str) -> tuple[str, str | None, str, str | None] | None:
    """(scheme, userinfo, host and path, query) of a URL string, None if it has no scheme.

    The userinfo ends at the *last* ``@`` before the first ``/`` that follows
    an ``@``: a password written with an unencoded ``@`` stays whole (a parser
    splitting at the first ``@`` would show its tail as the host), and an
    ``@`` in the path stays in the path. A URL whose authority is empty
    (``sqlite:////path``) has no userinfo.
    """
    if "://" not in text:
        return None
    scheme, rest = text.split("://", 1)
    head, sep, query = rest.partition("?")
    info = None
    first = head.find("@")
    if first > 0 and not head.startswith("/"):
        slash = head.find("/", first)
        end = (head if slash < 0 else head[:slash]).rfind("@")
        info, head = head[:end], head[end + 1 :]
    return scheme, info, head, query if sep else None


def userinfo(url: str) -> str | None:
    """The userinfo of a URL string as written (see ``_split`` for where it ends)."""
    parts = _split(url)
    return None if parts is None else parts[1]


def _is_secret_key(key: str) -> bool:
    return any(s in key.lower() for s in SECRET_QUERY_KEYS)


def _query_items(query: str) -> list[tuple[str, str, str]]:
    """(parameter as written, key decoded, value decoded) of each query parameter."""
    out = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        out.append((part, unquote_plus(key), unquote_plus(value)))
    return out


def _mask_dsn(value: str) -> str:
    """A libpq connection string or URI with its password hidden."""
    if "://" in value:
        return mask_url(value)
    return _DSN_PASSWORD.sub(lambda m: m.group(1) + MASK, value)


def mask_url(url: str | URL) -> str:
    """The URL with its secrets hidden, host and path kept; safe for logs, stats and the CLI.

    Text that is not a URL is never returned (it may hold a password where no
    parser would look).
    """
    parts = _split(_render(url))
    if parts is None:
        return f"{MASK} (not a URL)"
    scheme, info, head, query = parts
    shown = f"{scheme}://"
    if info is not None:
        user, colon, _password = info.partition(":")
        shown += f"{user}:{MASK}@" if colon else f"{info}@"
    shown += head
    if query is not None:
        params = []
        for written, key, value in _query_items(query):
            name = written.partition("=")[0]
            if _is_secret_key(key):
                params.append(f"{name}={MASK}")
            elif key.lower() in DSN_KEYS:
                params.append(f"{name}={quote(_mask_dsn(value), safe='/:@*=')}")
            else:
                params.append(written)
        shown += "?" + "&".join(params)
    return redact(shown, _raw_secrets(url))


def _dsn_secrets(value: str) -> list[str]:
    if "://" in value:
        return _raw_secrets(value)
    return [m.group(2).strip("'") for m in _DSN_PASSWORD.finditer(value)]


def _raw_secrets(url: str | URL) -> list[str]:
    """The secrets of a URL, each once, as decoded text."""
    found: list[str] = []
    if isinstance(url, URL) and url.password:
        found.append(str(url.password))
    parts = _split(_render(url))
    if parts is None:
        text = _render(url)
        return [*found, text] if text else found  # not a URL: all of it may be secret
    _scheme, info, _head, query = parts
    if info is not None and ":" in info:
        written = info.partition(":")[2]
        found += [written, unquote(written)]
    for _written, key, value in _query_items(query or ""):
        if _is_secret_key(key):
            found.append(value)
        elif key.lower() in DSN_KEYS:
            found += _dsn_secrets(value)
    return [s for s in dict.fromkeys(found) if s]


def url_secrets(url: str | URL) -> tuple[str, ...]:
    """Every form in which a message may carry the secrets of ``url``: as written, decoded,
    percent-encoded (as ``quote`` and ``quote_plus`` and SQLAlchemy write them)."""
    forms: list[str] = []
    for secret in _raw_secrets(url):
        forms += [secret, quote(secret, safe=""), quote_plus(secret), quote(secret, safe=" +")]
    return tuple(sorted(set(forms), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``; longer forms first, so none shows in part.

    A short secret is replaced only where it stands alone (see SHORT_SECRET).
    """
    for secret in sorted(set(secrets), key=len, reverse=True):
        if not secret:
            continue
        if len(secret) >= SHORT_SECRET:
            text = text.replace(secret, MASK)
        else:
            text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", MASK, text)
    return text
