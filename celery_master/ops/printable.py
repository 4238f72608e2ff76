"""Stored text shown to an operator: control characters escaped, so it cannot forge output.

Reasons, ``who``, holder names and history details are written by anyone who
can reach the broker or the database. Printed as stored, a newline in a
reason adds a fake line to ``status --check`` (which monitoring parses) and an
ANSI escape rewrites the operator's terminal. They are shown the way ``repr``
shows them (``\\n``, ``\\x1b``, ``\\u202e``); printable text is unchanged.
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

#: Unicode categories never shown raw: controls, format characters (bidi overrides), and the
#: line and paragraph separators
UNSHOWN = ("Cc", "Cf", "Zl", "Zp")


def printable(value: object) -> str:
    """``str(value)`` with every control or format character escaped as ``repr`` would."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(_escape(ch) if unicodedata.category(ch) in UNSHOWN else ch for ch in text)


def _escape(ch: str) -> str:
    return repr(ch)[1:-1] if ch not in "'\"" else ch
