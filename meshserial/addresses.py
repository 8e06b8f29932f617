"""Addresses as people type them: ``HOST:PORT``, ``[V6]:PORT``, ``:PORT``, a bare host or port.

No sockets and no event loop here: the configuration, discovery and the command line use these too,
and must not pull in asyncio to parse a string.
"""

from __future__ import annotations

import ipaddress

from meshserial.errors import UsageError

DEFAULT_PORT = 7217


def parse_hostport(
    text: str, *, default_port: int | None = DEFAULT_PORT, what: str = "address"
) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or (with a default port) ``HOST``."""
    text = text.strip()
    if not text:
        raise UsageError(f"empty {what}")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageError(f"bad {what} {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UsageError(f"bad {what} {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        # A bare IPv6 address without brackets has no room for a port.
        host, port_text = text, None
    else:
        host, port_text = text, None
    if port_text is None or port_text == "":
        if default_port is None:
            raise UsageError(f"bad {what} {text!r}: expected HOST:PORT")
        port = default_port
    else:
        try:
            port = int(port_text, 10)
        except ValueError:
            raise UsageError(f"bad {what} {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"bad {what} {text!r}: port {port} is out of range")
    return host or "0.0.0.0", port


def is_loopback(host: str) -> bool:
    """True if ``host`` names only the loopback interface."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
