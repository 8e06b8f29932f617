"""TCP listeners: opening one with a clear error, closing one without hanging, and plain RFC 2217
listeners for shared ports (``share --rfc2217`` and the local gateway of ``use --listen``)."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable

from meshserial.addresses import format_hostport, is_loopback
from meshserial.errors import PortBusy, UsageError
from meshserial.net.rfc2217_server import Rfc2217ServerSession
from meshserial.net.sharing import SharedPort

log = logging.getLogger(__name__)

#: A deep accept queue: under a connection flood a short one overflows, and the kernel then drops a
#: newcomer's SYN, which costs it a one-second retransmission before we even see it.
LISTEN_BACKLOG = 1024
#: How long a closed listener may take to finish; shutting down must never hang on it.
CLOSE_TIMEOUT = 2.0


async def listen(host: str, port: int, factory: Callable[[], asyncio.BaseProtocol]) -> asyncio.Server:
    """Start a TCP server, translating "address in use" and friends into one clear error."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(factory, host, port, reuse_address=True, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        where = format_hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(f"cannot listen on {where}: address already in use") from exc
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


async def close_listener(server: asyncio.Server, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close ``server`` and wait (briefly) until it has finished.

    ``wait_closed`` also waits for connections still open; ours are closed by then, but one whose
    peer stopped reading can take its close timeout, and shutting down must not wait that long.
    """
    server.close()
    try:
        async with asyncio.timeout(timeout):
            await server.wait_closed()
    except TimeoutError:
        log.info("listener on %s still had connections after %g s; going on", _where(server), timeout)


def _where(server: asyncio.Server) -> str:
    sockets = server.sockets
    if not sockets:
        return "(closed)"
    name = sockets[0].getsockname()
    return format_hostport(str(name[0]), int(name[1]))


class PlainListeners:
    """Plain RFC 2217 listeners for shared ports, one TCP port each (consecutive ports).

    Anyone who can reach them can use the ports: meant for loopback, trusted links and legacy tools.
    """

    def __init__(self, shared: list[SharedPort], host: str, port: int) -> None:
        self._shared = shared
        self._host = host
        self._port = port
        self._servers: list[asyncio.Server] = []
        #: ``(port name, rfc2217://HOST:PORT)`` for each listener, once started.
        self.addresses: list[tuple[str, str]] = []

    async def start(self) -> None:
        if not is_loopback(self._host):
            log.warning(
                "plain RFC 2217 on %s is unauthenticated and unencrypted: anyone who can reach it can "
                "use the port",
                self._host,
            )
        for index, shared in enumerate(self._shared):
            port = self._port + index if self._port else 0
            server = await listen(self._host, port, _session_factory(shared))
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            self.addresses.append((shared.name, f"rfc2217://{format_hostport(self._host, bound[1])}"))

    async def aclose(self) -> None:
        for server in self._servers:
            await close_listener(server)


def _session_factory(shared: SharedPort) -> Callable[[], asyncio.BaseProtocol]:
    return lambda: Rfc2217ServerSession(shared)
