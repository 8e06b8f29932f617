"""``meshserial use``: give a local application the remote port.

Modes: ``--pty`` creates a virtual serial port with a stable link; ``--listen HOST:PORT`` runs a local
RFC 2217 endpoint (for pyserial ``rfc2217://``, esptool, hub4com on Windows) relayed to the remote port.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshserial import paths
from meshserial.errors import ConnectError, ConnectionLost, UnknownServer, UsageError
from meshserial.keys import Identity, fingerprint, format_id
from meshserial.net.link import LinkOptions, PortLink
from meshserial.net.resilient import ResilientClient, StreamFor
from meshserial.net.rfc2217_client import connect_rfc2217
from meshserial.net.secure import DEFAULT_KEEPALIVE, ClientConnection
from meshserial.net.sharing import SCROLLBACK_BYTES, SharedPort
from meshserial.net.tcp import DEFAULT_PORT, format_hostport, parse_hostport
from meshserial.net.tcp import connect as tcp_connect
from meshserial.ports.base import Port
from meshserial.ports.pty import PTY_LIMITATIONS, PtyPort
from meshserial.proto import session as sess
from meshserial.proto.settings import SerialSettings
from meshserial.server import PlainServer, announce, load_identity_noting
from meshserial.trust import KnownServers

log = logging.getLogger(__name__)

TrustCheck = Callable[[bytes], Awaitable[None]]

_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What ``use`` connects to."""

    kind: str  # "rfc2217" (plain) or "meshserial" (secure, by name)
    host: str
    port: int
    name: str  # port name (secure) or a label for links and logs


def parse_target(text: str) -> Target:
    """``rfc2217://HOST:PORT`` (plain RFC 2217 server) or ``NAME@HOST[:PORT]`` (meshserial server)."""
    if text.startswith("rfc2217://"):
        rest = text[len("rfc2217://") :].split("?", 1)[0].rstrip("/")
        host, port = parse_hostport(rest, default_port=None, what="RFC 2217 address")
        label = _NAME_RE.sub("_", f"{host}_{port}")
        return Target(kind="rfc2217", host=host, port=port, name=label)
    if "://" in text:
        raise UsageError(f"unsupported target {text!r}: use NAME@HOST[:PORT] or rfc2217://HOST:PORT")
    name, sep, where = text.partition("@")
    if sep and name and where:
        host, port = parse_hostport(where, default_port=DEFAULT_PORT, what="server address")
        return Target(kind="meshserial", host=host, port=port, name=name)
    raise UsageError(f"bad target {text!r}: use NAME@HOST[:PORT] or rfc2217://HOST:PORT")


def server_label(host: str, port: int) -> str:
    """The name a server is pinned under in ``known_servers`` (like SSH: the host, plus a port if
    it is not the default one)."""
    return host if port == DEFAULT_PORT else format_hostport(host, port)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustOptions:
    trust_new: bool = False  # pin an unknown server without asking (SSH's accept-new)
    interactive: bool = False  # ask on the terminal


def trust_checker(label: str, options: TrustOptions) -> TrustCheck:
    """Decide whether to go on with a server that proved ``server_id``: pinned → yes; changed → never;
    new → pin it if allowed, ask on a terminal, otherwise refuse with the command that trusts it."""

    async def check(server_id: bytes) -> None:
        known = KnownServers().load()
        if known.check(label, server_id) == "pinned":
            return
        shown = f"{format_id(server_id)} (fingerprint {fingerprint(server_id)})"
        if options.trust_new:
            known.pin(label, server_id, via="first-use")
            print(f"meshserial: trusting new server {label}: {shown}", file=sys.stderr, flush=True)
            return
        if options.interactive and sys.stdin.isatty():
            question = f"meshserial: new server {label} presents {shown}.\nTrust it? [y/N] "
            answer = await asyncio.get_running_loop().run_in_executor(None, _ask, question)
            if answer.strip().lower() in ("y", "yes"):
                known.pin(label, server_id, via="confirmed")
                return
        raise UnknownServer(
            f"server {label} is not trusted yet; it presents {shown}. If that is its key, run "
            f"'meshserial trust {format_id(server_id)} --name {label}' or connect with --trust-new"
        )

    return check


def _ask(question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline()


async def connect_secure(
    host: str,
    port: int,
    *,
    identity: Identity,
    request: sess.Hello | Callable[[bytes], sess.Message],
    trust: TrustCheck,
    stream_for: StreamFor | None,
    keepalive: float = DEFAULT_KEEPALIVE,
    timeout: float = 10.0,
) -> tuple[ClientConnection, sess.Accept | sess.Paired]:
    """TCP, Noise handshake, server check, then our request; returns the connection and the answer."""
    _, conn = await tcp_connect(
        host,
        port,
        lambda: ClientConnection(identity, request=request, stream_for=stream_for, keepalive=keepalive),
        timeout=timeout,
    )
    try:
        async with asyncio.timeout(timeout):
            server_id = await conn.server_identified
        await trust(server_id)  # may ask a human: not under the timeout
        conn.proceed()
        async with asyncio.timeout(timeout):
            answer = await conn.answer
    except TimeoutError:
        conn.abort()
        raise ConnectError(f"{format_hostport(host, port)} did not complete the handshake in time") from None
    except BaseException:
        conn.abort()
        raise
    return conn, answer


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    read_only: bool = False
    trust: TrustOptions = field(default_factory=TrustOptions)
    keepalive: float = DEFAULT_KEEPALIVE
    reconnect: bool = True
    takeover: bool = False
    scrollback: float = 0.0


class Connection:
    """A connected remote port plus whatever keeps it alive (the reconnect loop of a secure session)."""

    def __init__(self, port: Port, client: ResilientClient | None = None) -> None:
        self.port = port
        self._client = client

    async def run(self) -> None:
        if self._client is not None:
            await self._client.run()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        else:
            await self.port.aclose()


def _status(line: str) -> None:
    print(f"meshserial: {line}", file=sys.stderr, flush=True)


async def connect_target(target: Target, options: ConnectOptions | None = None) -> Connection:
    """Connect; the returned port's RFC 2217 session is active."""
    where = format_hostport(target.host, target.port)
    if target.kind == "rfc2217":
        return Connection(await connect_rfc2217(target.host, target.port, name=where))
    options = options or ConnectOptions()
    identity = load_identity_noting()
    trust = trust_checker(server_label(target.host, target.port), options.trust)

    async def connector(hello: sess.Hello, stream_for: StreamFor) -> tuple[ClientConnection, sess.Accept]:
        conn, answer = await connect_secure(
            target.host,
            target.port,
            identity=identity,
            request=hello,
            trust=trust,
            stream_for=stream_for,
            keepalive=options.keepalive,
        )
        assert isinstance(answer, sess.Accept)
        return conn, answer

    hello = sess.Hello(
        port=target.name,
        mode="ro" if options.read_only else "rw",
        takeover=options.takeover,
        scrollback=options.scrollback,
    )
    client = ResilientClient(
        name=f"{target.name}@{where}",
        hello=hello,
        connector=connector,
        status=_status,
        reconnect=options.reconnect,
    )
    await client.open()
    return Connection(client.port, client)


def default_link(name: str) -> Path:
    return paths.runtime_dir() / name


@dataclass(frozen=True, slots=True, kw_only=True)
class UseOptions:
    settings: SerialSettings | None = None  # sent on connect when given
    connect: ConnectOptions = field(default_factory=ConnectOptions)
    dtr: bool | None = None
    rts: bool | None = None
    link_options: LinkOptions = field(default_factory=LinkOptions)


async def run_pty(target: Target, *, link: Path | None, options: UseOptions) -> int:
    """Virtual serial port until interrupted or the session ends."""
    link_path = link if link is not None else default_link(target.name)
    if link is None:
        paths.ensure_dir(link_path.parent)
    connection = await connect_target(target, options.connect)
    remote = connection.port
    # The PTY and its link appear only once the session is up, so a script can wait for the link.
    scrollback = options.connect.scrollback > 0
    pty = PtyPort(
        link=link_path,
        settings=options.settings or SerialSettings(),
        hold=SCROLLBACK_BYTES if scrollback else 0,
    )
    bridge = PortLink(pty, remote, options.link_options)
    try:
        async with asyncio.TaskGroup() as tasks:
            keeper = tasks.create_task(connection.run())
            await bridge.start()
            if options.settings is not None:
                remote.configure(options.settings)
            if options.dtr is not None or options.rts is not None:
                remote.set_control(dtr=options.dtr, rts=options.rts)
            announce(f"{pty.path}  (link: {link_path})")
            log.info("%s", PTY_LIMITATIONS)
            side, exc = await bridge.wait()
            keeper.cancel()
        if side is remote:
            raise ConnectionLost(f"connection to {remote.name} lost" + (f": {exc}" if exc else ""))
        return 0
    finally:
        await connection.aclose()
        await pty.aclose()


async def run_gateway(target: Target, *, listen: tuple[str, int], options: UseOptions) -> int:
    """Local RFC 2217 endpoint relayed to the remote port."""
    connection = await connect_target(target, options.connect)
    remote = connection.port
    shared = SharedPort(target.name, remote)
    server: PlainServer | None = None
    try:
        async with asyncio.TaskGroup() as tasks:
            keeper = tasks.create_task(connection.run())
            await shared.start()
            if options.settings is not None:
                remote.configure(options.settings)
            server = PlainServer([shared], *listen)
            await server.start()
            exc = await shared.closed
            keeper.cancel()
        raise ConnectionLost(f"connection to {remote.name} lost" + (f": {exc}" if exc else ""))
    finally:
        if server is not None:
            await server.aclose()
        await connection.aclose()
