"""The rendezvous service: an untrusted HTTP registry of signed server records.

Servers publish where they can be reached; clients fetch the records and verify the signatures themselves, so
the service is trusted for availability only, never for identity.  See ``docs/rendezvous.md``.
"""

from __future__ import annotations

from meshserial.rendezvous.app import DEFAULT_HOST, DEFAULT_PORT, Settings, make_app, serve

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Settings", "make_app", "serve"]
