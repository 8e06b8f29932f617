"""``meshserial use TARGET --listen``: a local plain RFC 2217 endpoint for a remote port.

For pyserial's ``rfc2217://``, esptool, hub4com/com0com and any other RFC 2217 client. The gateway holds
the remote port only while it is used: the listener is always up, and the session to the remote port
(the *upstream*) is opened when a local client connects and closed :attr:`GatewayOptions.linger`
seconds after the last one has gone. So an idle gateway does not hold the remote port's write lock,
while a tool that closes the port and opens it again at once (esptool between its stages, test
harnesses between tests) finds the session still there.

A local connection that arrives while the upstream is being opened waits for it with its socket
paused, then is handed to an RFC 2217 server session on the shared port. A connection that closes at
once (a health probe, ``nc -z``) costs nothing more than that: it leaves no state behind. If the
upstream cannot be opened, each waiting client gets a one-line reason in-band (as ser2net says
"port in use") and is closed; the next one tries again.

States, driven by :meth:`Gateway.run`::

    IDLE --local client--> CONNECTING --up--> UP --last client gone--> LINGER --linger over--> IDLE
                               |                ^                          |
                               +--failed--> IDLE +-------local client-------+
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from meshserial.addresses import format_hostport
from meshserial.client import Connection, Upstream, UseOptions
from meshserial.errors import MeshserialError
from meshserial.net.listener import close_listener, listen
from meshserial.net.rfc2217_server import Rfc2217ServerSession
from meshserial.net.sharing import SharedPort
from meshserial.proto.text import escape

log = logging.getLogger(__name__)

DEFAULT_LINGER = 5.0
#: Local clients waiting for the upstream at once; more are turned away (each holds a socket).
MAX_WAITING = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayOptions:
    listen: tuple[str, int]
    linger: float = DEFAULT_LINGER


class _Waiting(asyncio.Protocol):
    """A local client waiting, reading nothing, for the upstream session."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any TCP transport: asyncio's own or uvloop's (which does not subclass asyncio.Transport).
        tcp: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tcp
        tcp.pause_reading()
        self._gateway.arrived(self)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        log.debug("data from a waiting local client before the hand-over; dropped")

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self._gateway.left(self)


class Gateway:
    """See the module docstring."""

    def __init__(self, upstream: Upstream, use: UseOptions, options: GatewayOptions) -> None:
        self._upstream = upstream
        self._use = use
        self._options = options
        self._waiting: list[_Waiting] = []
        self._sessions: set[Rfc2217ServerSession] = set()
        self._shared: SharedPort | None = None
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None

    # ---- local clients -------------------------------------------------------------------------------

    def arrived(self, client: _Waiting) -> None:
        if len(self._waiting) >= MAX_WAITING:
            self._refuse(client, "too many local clients waiting")
            return
        self._waiting.append(client)
        if self._shared is not None:
            self._hand_over()
        self._changed.set()

    def left(self, client: _Waiting) -> None:
        if client in self._waiting:
            self._waiting.remove(client)
            self._changed.set()

    def _closed(self, session: Rfc2217ServerSession) -> None:
        self._sessions.discard(session)
        self._changed.set()

    def _hand_over(self) -> None:
        shared = self._shared
        assert shared is not None
        waiting, self._waiting = self._waiting, []
        for client in waiting:
            transport = client.transport
            if client.gone or transport is None or transport.is_closing():
                continue
            session = Rfc2217ServerSession(shared, on_close=self._closed)
            self._sessions.add(session)
            transport.set_protocol(session)
            transport.resume_reading()  # takes effect on the next loop iteration, after connection_made
            session.connection_made(transport)

    @staticmethod
    def _refuse(client: _Waiting, reason: str) -> None:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.write(f"\r\nmeshserial: {escape(reason)}\r\n".encode())
            client.transport.close()

    # ---- the upstream ----------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the address (with the port the system chose for port 0)."""
        self._server = await listen(*self._options.listen, lambda: _Waiting(self))
        bound = self._server.sockets[0].getsockname()
        return self._options.listen[0], int(bound[1])

    async def serve(self) -> None:
        """Open the upstream whenever local clients wait for it; until cancelled."""
        while True:
            await self._wait(lambda: bool(self._waiting))
            connection = await self._open()
            if connection is not None:
                await self._serve(connection)

    async def aclose(self) -> None:
        if self._server is not None:
            await close_listener(self._server)

    async def _wait(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until ``condition()`` holds (True) or ``timeout`` passes (False)."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def _open(self) -> Connection | None:
        label = self._upstream.label
        log.info("a local client connected: opening %s", label)
        try:
            connection = await self._upstream.connect()
        except MeshserialError as exc:
            log.warning("cannot open %s for a local client: %s", label, exc)
            waiting, self._waiting = self._waiting, []
            for client in waiting:
                self._refuse(client, f"cannot open {label}: {exc}")
            return None
        shared = SharedPort(self._upstream.target.name, connection.port)
        await shared.start()
        settings = self._use.settings
        if settings is not None:
            connection.port.configure(settings)
        shared.closed.add_done_callback(lambda _: self._changed.set())
        self._shared = shared
        self._hand_over()
        return connection

    async def _serve(self, connection: Connection) -> None:
        """Keep the upstream while it is used (and ``linger`` seconds more), or until it is lost."""
        shared = self._shared
        assert shared is not None
        label = self._upstream.label
        try:
            async with asyncio.TaskGroup() as tasks:
                keeper = tasks.create_task(connection.run())
                while not shared.closed.done():
                    await self._wait(lambda: not self._in_use() or shared.closed.done())
                    if shared.closed.done():
                        break
                    if not await self._wait(
                        lambda: self._in_use() or shared.closed.done(), self._options.linger
                    ):
                        log.info("no local client for %g s: closing %s", self._options.linger, label)
                        break
                keeper.cancel()
        finally:
            self._shared = None
            if shared.closed.done() and (exc := shared.closed.result()) is not None:
                log.warning("lost %s: %s", label, exc)
            await shared.aclose()
            await connection.aclose()

    def _in_use(self) -> bool:
        return bool(self._sessions or self._waiting)


async def run_gateway(upstream: Upstream, use: UseOptions, options: GatewayOptions) -> int:
    """``use --listen``: check the target once, then serve local clients until interrupted. The line
    that says where the gateway listens goes to the connect options' ``voice.say``."""
    await upstream.prepare()
    if upstream.target.kind != "rfc2217":
        # Identity, trust (perhaps asking on this terminal) and authorization are settled now, by a
        # watching session that does not take the port, not when the first local client connects.
        check = await upstream.connect(read_only=True)
        await check.aclose()
    gateway = Gateway(upstream, use, options)
    try:
        host, port = await gateway.start()
        use.connect.voice.say(f"sharing {upstream.target.name} on rfc2217://{format_hostport(host, port)}")
        await gateway.serve()
    finally:
        await gateway.aclose()
    return 0  # pragma: no cover - serve() ends only by cancellation
