"""TCP helpers: socket options, connecting with a deadline, receiving into one buffer."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from meshserial.addresses import format_hostport
from meshserial.errors import ConnectError

CONNECT_TIMEOUT = 5.0

P = TypeVar("P", bound=asyncio.BaseProtocol)


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
