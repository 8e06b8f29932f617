"""Every exception meshserial raises on purpose.

Library code raises only these classes; a boundary that catches a foreign exception (``OSError``,
``serial.SerialException``, ``nacl.exceptions.CryptoError`` …) translates it with ``raise … from exc``.
The CLI maps each class to an exit code and prints one line; the class docstring explains the error to
a user::

    MeshserialError                  exit 1
    ├── UsageError                   exit 2   local misuse: a bad flag, address, or argument
    ├── ConfigError                  exit 2   a config or state file that cannot be used
    │   └── KeyFileError             exit 2   an identity or trust file is missing, unreadable or too open
    ├── PortError                    exit 3   a local serial device or PTY could not be used
    │   ├── PortNotFound             exit 3
    │   ├── PortBusy                 exit 3
    │   └── PortClosed               exit 3   used after close, by us
    ├── NetworkError                 exit 4   could not reach, or lost, the peer
    │   ├── ConnectError             exit 4
    │   └── ConnectionLost           exit 4   broken by the peer or the network
    ├── ProtocolError                exit 5   the peer broke the protocol (malformed bytes, bad handshake)
    │   └── HandshakeError           exit 5
    └── AuthError                    exit 6   identity or authorization failed
        ├── UnknownServer            exit 6   first contact with a key nobody has trusted yet
        ├── ServerKeyChanged         exit 6   a pinned name now presents another key
        └── Refused                  exit 6   the server refused us (not authorized, port held, …)
"""

from __future__ import annotations


class MeshserialError(Exception):
    """meshserial failed."""

    exit_code = 1


class UsageError(MeshserialError):
    """The command line or an argument is not usable as given."""

    exit_code = 2


class ConfigError(MeshserialError):
    """A configuration or state file cannot be used."""

    exit_code = 2


class KeyFileError(ConfigError):
    """An identity or trust file is missing, unreadable, malformed or readable by others."""


class PortError(MeshserialError):
    """A local serial device or virtual port could not be opened or used."""

    exit_code = 3


class PortNotFound(PortError):
    """The serial device does not exist."""


class PortBusy(PortError):
    """The serial device or local address is already in use."""


class PortClosed(PortError):
    """The port was used after it had been closed."""


class NetworkError(MeshserialError):
    """The peer could not be reached, or the connection to it was lost."""

    exit_code = 4


class ConnectError(NetworkError):
    """Connecting to the peer failed."""


class ConnectionLost(NetworkError):
    """The connection was broken by the peer or by the network."""


class ProtocolError(MeshserialError):
    """The peer sent bytes that break the protocol; the connection cannot go on."""

    exit_code = 5


class HandshakeError(ProtocolError):
    """The secure handshake failed: malformed, tampered with, or from the wrong key."""


class AuthError(MeshserialError):
    """An identity could not be verified, or access was not granted."""

    exit_code = 6


class UnknownServer(AuthError):
    """The server's key is not trusted yet; trust it explicitly first."""


class ServerKeyChanged(AuthError):
    """A server we pinned now presents a different key: possible impersonation."""


class Refused(AuthError):
    """The server refused the session."""
