"""``meshserial share``: serve local serial ports.

One process serves every port it was given. In plain RFC 2217 mode (``--rfc2217 HOST:PORT``) each port
gets its own TCP listener, as with ser2net, and any client that can reach it may use it: that mode is
unauthenticated and meant for loopback or trusted links and legacy tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from meshserial.access import FileAuthorizer
from meshserial.errors import PortBusy, Refused, UsageError
from meshserial.keys import Identity, load_or_create_identity
from meshserial.net.rfc2217_server import Rfc2217ServerSession
from meshserial.net.secure import HandshakeLimiter, ServerConnection
from meshserial.net.sharing import Mode, SharedPort
from meshserial.net.tcp import format_hostport, is_loopback
from meshserial.ports.factory import open_port
from meshserial.proto import session as sess
from meshserial.proto.settings import SerialSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceConfig:
    spec: str  # a device path or sim:NAME
    name: str
    settings: SerialSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareConfig:
    devices: tuple[DeviceConfig, ...]
    listen: tuple[str, int] | None = None  # the secure listener
    rfc2217: tuple[str, int] | None = None  # plain RFC 2217, unauthenticated
    wait_for_device: bool = False
    extra: dict[str, object] = field(default_factory=dict)


async def listen(host: str, port: int, factory: Callable[[], asyncio.Protocol]) -> asyncio.Server:
    """Start a TCP server, translating "address in use" and friends into one clear error."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(factory, host, port, reuse_address=True)
    except OSError as exc:
        where = format_hostport(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(f"cannot listen on {where}: address already in use") from exc
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


def announce(line: str) -> None:
    """A line for humans and scripts on stdout, flushed at once (tests wait for it)."""
    print(line, flush=True)


class PlainServer:
    """Plain RFC 2217 listeners for the shared ports, one TCP port each (consecutive ports)."""

    def __init__(self, shared: list[SharedPort], host: str, port: int) -> None:
        self._shared = shared
        self._host = host
        self._port = port
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        if not is_loopback(self._host):
            print(
                f"meshserial: warning: plain RFC 2217 on {self._host} is unauthenticated and unencrypted: "
                "anyone who can reach it can use the port",
                file=sys.stderr,
                flush=True,
            )
        for index, shared in enumerate(self._shared):
            port = self._port + index if self._port else 0
            server = await listen(self._host, port, _session_factory(shared))
            self._servers.append(server)
            bound = server.sockets[0].getsockname()
            announce(f"sharing {shared.name} on rfc2217://{format_hostport(self._host, bound[1])}")

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


def _session_factory(shared: SharedPort) -> Callable[[], asyncio.Protocol]:
    return lambda: Rfc2217ServerSession(shared)


class SecureServer:
    """One encrypted listener for every shared port; clients name the port inside the channel."""

    REVOCATION_CHECK = 1.0

    def __init__(self, shared: list[SharedPort], identity: Identity, host: str, port: int) -> None:
        self._ports = {item.name: item for item in shared}
        self._identity = identity
        self._host = host
        self._port = port
        self._authorizer = FileAuthorizer()
        self._limiter = HandshakeLimiter()
        self._connections: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        self._server = await listen(self._host, self._port, self._new_connection)
        self.address = self._server.sockets[0].getsockname()[:2]
        where = format_hostport(self._host, self.address[1])
        for name in self._ports:
            announce(f"sharing {name} on {where} as {self._identity.id_string}")

    def _new_connection(self) -> ServerConnection:
        conn = ServerConnection(
            self._identity,
            authorizer=self._authorizer,
            open_session=self._open_session,
            limiter=self._limiter,
        )
        self._connections.add(conn)
        return conn

    def _open_session(self, conn: ServerConnection, hello: sess.Hello, label: str) -> asyncio.Protocol:
        shared = self._ports.get(hello.port)
        if shared is None:
            raise Refused(f"no port named {hello.port!r}")
        mode = Mode.READ_WRITE if hello.mode == "rw" else Mode.READ_ONLY
        session = Rfc2217ServerSession(shared, mode=mode, label=label, attach=False)
        shared.attach(session, mode)
        return session

    async def watch_revocations(self) -> None:
        """End live sessions whose key lost its rights (``meshserial revoke`` / an edit of the file)."""
        while True:
            await asyncio.sleep(self.REVOCATION_CHECK)
            if not self._authorizer.changed():
                continue
            for conn in list(self._connections):
                if conn.peer_id is None or conn.port_name is None or conn.closing:
                    continue
                rights = self._authorizer.rights(conn.peer_id, conn.port_name)
                if rights is None or (conn.mode == "rw" and rights != "rw"):
                    log.warning(
                        "access of %s to %s revoked; ending its session",
                        self._authorizer.label(conn.peer_id),
                        conn.port_name,
                    )
                    conn.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def run_share(config: ShareConfig) -> int:
    """Open the devices, serve them until cancelled, then close everything."""
    names = [d.name for d in config.devices]
    if len(set(names)) != len(names):
        raise UsageError(f"port names must be unique: {', '.join(names)}")
    if config.rfc2217 is None and config.listen is None:
        raise UsageError("nothing to serve on: give --listen HOST:PORT and/or --rfc2217 HOST:PORT")
    identity = load_identity_noting() if config.listen is not None else None
    shared: list[SharedPort] = []
    plain: PlainServer | None = None
    secure: SecureServer | None = None
    try:
        for device in config.devices:
            port = open_port(device.spec, device.settings, wait=config.wait_for_device)
            item = SharedPort(device.name, port)
            await item.start()
            shared.append(item)
        if config.listen is not None:
            assert identity is not None
            secure = SecureServer(shared, identity, *config.listen)
            await secure.start()
        if config.rfc2217 is not None:
            plain = PlainServer(shared, *config.rfc2217)
            await plain.start()
        async with asyncio.TaskGroup() as tasks:
            if secure is not None:
                tasks.create_task(secure.watch_revocations())
            await asyncio.Event().wait()  # serve until cancelled (SIGINT/SIGTERM)
    finally:
        if secure is not None:
            await secure.aclose()
        if plain is not None:
            await plain.aclose()
        for item in shared:
            await item.aclose()
    return 0


def load_identity_noting() -> Identity:
    """This machine's identity, created on first use with a note on stderr."""
    identity, created = load_or_create_identity()
    if created:
        print(f"meshserial: created a new identity {identity.id_string}", file=sys.stderr, flush=True)
    return identity
