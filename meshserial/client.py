"""``meshserial use``: give a local application the remote port.

Modes: ``--pty`` creates a virtual serial port with a stable link; ``--listen HOST:PORT`` runs a local
RFC 2217 endpoint (for pyserial ``rfc2217://``, esptool, hub4com on Windows) relayed to the remote port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshserial import paths
from meshserial.addresses import DEFAULT_PORT, format_hostport, parse_hostport
from meshserial.errors import ConnectError, ConnectionLost, MeshserialError, UnknownServer, UsageError
from meshserial.finder import FindOptions, Resolved, resolve, server_label
from meshserial.keys import Identity, fingerprint, format_id, load_or_create_identity
from meshserial.net.link import LinkOptions, PortLink
from meshserial.net.resilient import Connector, ResilientClient, StreamFor
from meshserial.net.rfc2217_client import connect_rfc2217
from meshserial.net.secure import DEFAULT_KEEPALIVE, ClientConnection
from meshserial.net.sharing import SCROLLBACK_BYTES
from meshserial.net.tcp import connect as tcp_connect
from meshserial.ports.base import Port
from meshserial.ports.pty import PTY_LIMITATIONS, PtyPort
from meshserial.proto import session as sess
from meshserial.proto.settings import SerialSettings
from meshserial.proto.text import check_port_name, escape, valid_port_name
from meshserial.trust import KnownServers
from meshserial.voice import Voice

log = logging.getLogger(__name__)

TrustCheck = Callable[[bytes], Awaitable[None]]

_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
STAGGER = 0.25  # seconds between connection attempts to the addresses of one server


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What ``use`` connects to."""

    kind: str  # "rfc2217" (plain), "meshserial" (secure, NAME@HOST) or "discover" (secure, NAME)
    host: str  # empty for "discover": found by discovery
    port: int
    name: str  # port name (secure) or a label for links and logs


_TARGET_FORMS = "NAME, NAME@HOST[:PORT] or rfc2217://HOST:PORT"


def parse_target(text: str) -> Target:
    """``rfc2217://HOST:PORT`` (plain RFC 2217 server), ``NAME@HOST[:PORT]`` (meshserial server) or
    ``NAME`` (a meshserial port found by discovery)."""
    if text.startswith("rfc2217://"):
        rest = text[len("rfc2217://") :].split("?", 1)[0].rstrip("/")
        host, port = parse_hostport(rest, default_port=None, what="RFC 2217 address")
        label = _NAME_RE.sub("_", f"{host}_{port}")
        return Target(kind="rfc2217", host=host, port=port, name=label)
    if "://" in text:
        raise UsageError(f"unsupported target {text!r}: use {_TARGET_FORMS}")
    name, sep, where = text.partition("@")
    if sep and name and where:
        host, port = parse_hostport(where, default_port=DEFAULT_PORT, what="server address")
        return Target(kind="meshserial", host=host, port=port, name=check_port_name(name))
    if not sep and valid_port_name(text):
        return Target(kind="discover", host="", port=0, name=text)
    shown = escape(text)
    if not sep and ":" in text:
        raise UsageError(f"bad target {shown!r}: a server address needs the port's name: NAME@{shown}")
    raise UsageError(f"bad target {shown!r}: use {_TARGET_FORMS}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustOptions:
    trust_new: bool = False  # pin an unknown server without asking (SSH's accept-new)


def trust_checker(label: str, options: TrustOptions, voice: Voice) -> TrustCheck:
    """Decide whether to go on with a server that proved ``server_id``: pinned → yes; changed → never;
    new → pin it if allowed, ask if there is someone to ask (``voice.ask``), otherwise refuse with the
    command that trusts it."""

    async def check(server_id: bytes) -> None:
        known = KnownServers().load()
        if known.check(label, server_id) == "pinned":
            return
        shown = f"{format_id(server_id)} (fingerprint {fingerprint(server_id)})"
        if options.trust_new:
            known.pin(label, server_id, via="first-use")
            voice.note(f"trusting new server {escape(label)}: {shown}")
            return
        if voice.ask is not None:
            answer = await voice.ask(f"new server {escape(label)} presents {shown}.\nTrust it? [y/N] ")
            if answer.strip().lower() in ("y", "yes"):
                known.pin(label, server_id, via="confirmed")
                return
        raise UnknownServer(
            f"server {label} is not trusted yet; it presents {shown}. If that is its key, run "
            f"'meshserial trust {format_id(server_id)} --name {label}' or connect with --trust-new"
        )

    return check


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
    conn, server_id = await _identified(
        host,
        port,
        identity=identity,
        request=request,
        stream_for=stream_for,
        keepalive=keepalive,
        timeout=timeout,
    )
    return await _finish(conn, server_id, trust=trust, where=format_hostport(host, port), timeout=timeout)


async def _identified(
    host: str,
    port: int,
    *,
    identity: Identity,
    request: sess.Hello | Callable[[bytes], sess.Message],
    stream_for: StreamFor | None,
    keepalive: float,
    timeout: float,
) -> tuple[ClientConnection, bytes]:
    """TCP and the handshake up to the server's proven identity (message 2)."""
    _, conn = await tcp_connect(
        host,
        port,
        lambda: ClientConnection(identity, request=request, stream_for=stream_for, keepalive=keepalive),
        timeout=timeout,
    )
    try:
        async with asyncio.timeout(timeout):
            return conn, await conn.server_identified
    except TimeoutError:
        conn.abort()
        raise ConnectError(f"{format_hostport(host, port)} did not complete the handshake in time") from None
    except BaseException:
        conn.abort()
        raise


async def _finish(
    conn: ClientConnection, server_id: bytes, *, trust: TrustCheck, where: str, timeout: float
) -> tuple[ClientConnection, sess.Accept | sess.Paired]:
    """Check the identified server, send our request, wait for the answer."""
    try:
        await trust(server_id)  # may ask a human: not under the timeout
        conn.proceed()
        async with asyncio.timeout(timeout):
            answer = await conn.answer
    except TimeoutError:
        conn.abort()
        raise ConnectError(f"{where} did not complete the handshake in time") from None
    except BaseException:
        conn.abort()
        raise
    return conn, answer


async def connect_first(
    addresses: Sequence[tuple[str, int]],
    *,
    identity: Identity,
    expect: bytes,
    request: sess.Hello,
    trust: TrustCheck,
    stream_for: StreamFor | None,
    keepalive: float = DEFAULT_KEEPALIVE,
    timeout: float = 10.0,
    stagger: float = STAGGER,
) -> tuple[ClientConnection, sess.Accept | sess.Paired]:
    """Connect to one server that has several addresses (Happy Eyeballs, RFC 8305, for paths).

    Attempts start in order, each ``stagger`` seconds after the previous one or as soon as it failed.
    The first to complete the handshake up to the server's identity wins and the others are cancelled,
    so only the winner sends our request (a second hello would find the port held). A server that
    proves another identity than ``expect`` (the one discovery announced) counts as a failed attempt.
    """
    if not addresses:
        raise ConnectError("no address to connect to")
    started = [asyncio.Event() for _ in addresses]
    failed = [asyncio.Event() for _ in addresses]
    errors: list[tuple[str, MeshserialError]] = []
    won: list[tuple[ClientConnection, bytes, str]] = []
    tasks: list[asyncio.Task[None]] = []

    async def attempt(index: int, host: str, port: int) -> None:
        if index:
            await started[index - 1].wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(stagger):
                    await failed[index - 1].wait()
        if won:
            return
        started[index].set()
        where = format_hostport(host, port)
        try:
            conn, server_id = await _identified(
                host, port, identity=identity, request=request, stream_for=stream_for,
                keepalive=keepalive, timeout=timeout,
            )  # fmt: skip
        except MeshserialError as exc:
            errors.append((where, exc))
            failed[index].set()
            return
        if server_id != expect:
            conn.abort()
            errors.append(
                (where, ConnectError(f"{where} presents {format_id(server_id)}, not the announced id"))
            )
            failed[index].set()
            return
        if won:
            conn.abort()
            return
        won.append((conn, server_id, where))
        log.info("connected to %s", where)
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async with asyncio.TaskGroup() as group:
        tasks.extend(group.create_task(attempt(i, h, p)) for i, (h, p) in enumerate(addresses))
    if not won:
        if len(errors) == 1:
            raise errors[0][1]
        raise ConnectError("; ".join(f"{where}: {exc}" for where, exc in errors))
    conn, server_id, where = won[0]
    return await _finish(conn, server_id, trust=trust, where=where, timeout=timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    read_only: bool = False
    trust: TrustOptions = field(default_factory=TrustOptions)
    keepalive: float = DEFAULT_KEEPALIVE
    reconnect: bool = True
    takeover: bool = False
    scrollback: float = 0.0
    find: FindOptions = field(default_factory=FindOptions)  # how a NAME target is looked up
    voice: Voice = field(default_factory=Voice)  # where status lines and questions go


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


class Upstream:
    """One target, ready to be connected to as often as needed (the gateway connects on demand).

    :meth:`prepare` loads the identity and looks a discovered name up once, so that errors (no such
    port, no identity) come at start-up; every :meth:`connect` then starts a session, and a session's
    own reconnects look the name up again (the server may have moved between LAN and overlay).
    """

    def __init__(self, target: Target, options: ConnectOptions | None = None) -> None:
        self.target = target
        self.options = options or ConnectOptions()
        self._identity: Identity | None = None
        self._resolved: Resolved | None = None

    @property
    def label(self) -> str:
        """``NAME@WHERE`` for messages (``HOST:PORT`` of a plain RFC 2217 server)."""
        target = self.target
        if target.kind == "rfc2217":
            return format_hostport(target.host, target.port)
        if self._resolved is not None:
            where = self._resolved.host or format_hostport(*self._resolved.addresses[0])
        else:
            where = format_hostport(target.host, target.port)
        return f"{target.name}@{where}"

    async def prepare(self) -> None:
        if self.target.kind == "rfc2217" or self._identity is not None:
            return
        self._identity, created = load_or_create_identity()
        if created:
            self.options.voice.note(f"created a new identity {self._identity.id_string}")
        if self.target.kind == "discover":
            self._resolved = await resolve(self.target.name, self.options.find)

    async def connect(self, *, read_only: bool | None = None) -> Connection:
        """Connect; the returned port's RFC 2217 session is active. ``read_only`` overrides the
        options' mode (the gateway's start-up check watches, so as not to take the port)."""
        target, options = self.target, self.options
        if target.kind == "rfc2217":
            where = format_hostport(target.host, target.port)
            return Connection(await connect_rfc2217(target.host, target.port, name=where))
        await self.prepare()
        identity = self._identity
        assert identity is not None
        connector: Connector
        if self._resolved is not None:
            connector = _discovered_connector(self._resolved, identity, options)
        else:
            connector = _direct_connector(target, identity, options)
        watch = options.read_only if read_only is None else read_only
        hello = sess.Hello(
            port=target.name,
            mode="ro" if watch else "rw",
            takeover=options.takeover,
            scrollback=options.scrollback,
            features=(sess.DEVICE_FEATURE,),
        )
        client = ResilientClient(
            name=self.label,
            hello=hello,
            connector=connector,
            status=lambda line: options.voice.note(escape(line)),  # status lines quote the server
            reconnect=options.reconnect,
        )
        await client.open()
        return Connection(client.port, client)


async def connect_target(target: Target, options: ConnectOptions | None = None) -> Connection:
    """Connect once; the returned port's RFC 2217 session is active."""
    return await Upstream(target, options).connect()


def _direct_connector(target: Target, identity: Identity, options: ConnectOptions) -> Connector:
    """Connect to ``NAME@HOST:PORT``."""
    trust = trust_checker(server_label(target.host, target.port), options.trust, options.voice)

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

    return connector


def _discovered_connector(resolved: Resolved, identity: Identity, options: ConnectOptions) -> Connector:
    """Connect to a port found by discovery; every reconnect looks the name up again (the server may
    have moved between LAN and overlay), keeping to the same server identity."""
    trust = trust_checker(resolved.label, options.trust, options.voice)
    current = resolved
    first = True

    async def connector(hello: sess.Hello, stream_for: StreamFor) -> tuple[ClientConnection, sess.Accept]:
        nonlocal current, first
        if not first:
            try:
                current = await resolve(current.name, options.find, server_id=current.server_id)
                log.info(
                    "%s is at %s now", current.name, ", ".join(format_hostport(*a) for a in current.addresses)
                )
            except MeshserialError as exc:
                log.info(
                    "looking %s up again failed (%s); trying its last known addresses", current.name, exc
                )
        first = False
        conn, answer = await connect_first(
            current.addresses,
            identity=identity,
            expect=current.server_id,
            request=hello,
            trust=trust,
            stream_for=stream_for,
            keepalive=options.keepalive,
        )
        assert isinstance(answer, sess.Accept)
        return conn, answer

    return connector


def _ended(name: str, exc: BaseException | None) -> MeshserialError:
    """The error for a session that ended under us: its own (it says why) or a plain "lost"."""
    if isinstance(exc, MeshserialError):
        return exc
    return ConnectionLost(f"connection to {name} lost" + (f": {exc}" if exc else ""))


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
            options.connect.voice.say(f"{pty.path}  (link: {link_path})")
            log.info("%s", PTY_LIMITATIONS)
            side, exc = await bridge.wait()
            keeper.cancel()
        if side is remote:
            raise _ended(remote.name, exc)
        return 0
    finally:
        await connection.aclose()
        await pty.aclose()
