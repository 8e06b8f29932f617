"""Text that crosses a trust boundary: port names, and anything a peer chose on its way to a human.

Port names travel in ``hello`` messages, mDNS adverts, rendezvous records and targets such as
``NAME@HOST:PORT``, so they are checked where they are made (``share``), not only where they are used:
1 to 64 characters from ``A-Z a-z 0-9 . _ - +``, starting with a letter or digit. That keeps out what
would break a target (``@``, ``/``, ``:``), a shell word or a table column (spaces), or a terminal
(control characters).

Everything else a peer chose (TXT values, record fields, deny reasons, device strings, names in
certificates) may contain any character. :func:`escape` makes such text harmless to print or log:
every control character (C0, DEL, C1), every Unicode format character (bidirectional overrides,
zero-width joiners) and the Unicode line and paragraph separators become visible ``\\xNN`` /
``\\uNNNN`` escapes, so a value cannot clear a screen, set a window title, move the cursor or start a
forged log line.
"""

from __future__ import annotations

import re
import unicodedata

from meshserial.errors import UsageError

PORT_NAME_MAX = 64
PORT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
PORT_NAME_RULE = "1-64 characters from A-Z a-z 0-9 . _ - +, starting with a letter or digit"

# Characters that are always escaped: C0, DEL, C1. Others are decided by Unicode category.
_ASCII_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F))
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def valid_port_name(name: str) -> bool:
    """Whether ``name`` is a usable port name (see the module docstring)."""
    return PORT_NAME_RE.fullmatch(name) is not None


def check_port_name(name: str) -> str:
    """``name`` if it is a usable port name, else :class:`UsageError` saying what is allowed."""
    if not valid_port_name(name):
        # Quoted by hand: repr() of the escaped text would double every backslash of the escapes.
        raise UsageError(f"port name '{escape(name, PORT_NAME_MAX)}' is not usable: use {PORT_NAME_RULE}")
    return name


def escape(text: str, limit: int | None = None) -> str:
    """``text`` with every control, format and separator character made visible; cut to ``limit``
    characters of input (with ``…``) when given."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if all(c in _ASCII_SAFE for c in text):
        return text  # the common case, without a per-character category lookup
    return "".join(_escape_char(c) for c in text)


def _escape_char(c: str) -> str:
    if c in _ASCII_SAFE:
        return c
    code = ord(c)
    if code < 0x100 and (code < 0x20 or 0x7F <= code <= 0x9F):
        return f"\\x{code:02x}"
    if unicodedata.category(c) in _UNSAFE_CATEGORIES:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return c
