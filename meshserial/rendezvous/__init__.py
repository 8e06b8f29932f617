"""The rendezvous service: an untrusted HTTP registry of signed server records.

Servers publish where they can be reached; clients fetch the records and verify the signatures themselves, so
the service is trusted for availability only, never for identity.  See ``docs/rendezvous.md``.

The application (and aiohttp) is imported only when used: ``meshserial list`` must start fast.
"""

from __future__ import annotations

from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7218
DEFAULT_MAX_IDS_PER_SOURCE = 32  # server identities with a live record per client address (IPv6: per /64)

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_IDS_PER_SOURCE", "DEFAULT_PORT", "Settings", "make_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("Settings", "make_app", "serve"):
        from meshserial.rendezvous import app  # noqa: PLC0415 - see the module docstring

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
