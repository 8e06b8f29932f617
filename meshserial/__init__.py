"""meshserial: share serial ports across a LAN or an overlay VPN, encrypted, discoverable and robust."""

from __future__ import annotations

__version__ = "0.1.0"
