"""TCP helpers: address parsing, socket options, connecting with a deadline."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from meshserial.errors import ConnectError, UsageError

DEFAULT_PORT = 7217
CONNECT_TIMEOUT = 5.0

P = TypeVar("P", bound=asyncio.BaseProtocol)


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


def tune_socket(transport: asyncio.BaseTransport) -> None:
    """Low latency and dead-peer detection on a TCP transport (no-op for other transports)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:  # pragma: no cover - exotic socket families
        pass


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def connect(
    host: str, port: int, factory: Callable[[], P], *, timeout: float = CONNECT_TIMEOUT
) -> tuple[asyncio.Transport, P]:
    """Open a TCP connection with ``factory``'s protocol, or raise :class:`ConnectError`."""
    loop = asyncio.get_running_loop()
    where = format_hostport(host, port)
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(factory, host, port)
    except TimeoutError:
        raise ConnectError(f"cannot connect to {where}: no answer within {timeout:g} s") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot connect to {where}: {reason}") from exc
    tune_socket(transport)
    return transport, protocol


RECV_SIZE = 256 * 1024


class _ThreadBuffer(threading.local):
    view: memoryview | None = None


_recv_buffer = _ThreadBuffer()


class ReceiveBuffer(asyncio.BufferedProtocol):
    """Receive into one reusable buffer instead of a fresh ``bytes`` per ``recv``.

    asyncio's plain protocols get each read as a new 256 KiB object that is then shrunk; with glibc that
    is an mmap, an mremap and a munmap per read — three system calls on every small serial write. A
    :class:`asyncio.BufferedProtocol` reads with ``recv_into`` into this buffer, and only the bytes that
    arrived are copied out to :meth:`data_received`.

    Every connection of a thread's event loop shares the one buffer: the loop calls ``get_buffer``,
    ``recv_into`` and ``buffer_updated`` back to back for one connection at a time, and nothing keeps a
    view of the buffer after ``buffer_updated`` returns (the secure channel copies the partial record it
    keeps). So a thousand idle or half-open connections cost no receive memory at all, instead of
    256 KiB each.
    """

    @property
    def _recv_view(self) -> memoryview:
        view = _recv_buffer.view
        if view is None:
            view = _recv_buffer.view = memoryview(bytearray(RECV_SIZE))
        return view

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._recv_view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def eof_received(self) -> bool | None:
        return None
