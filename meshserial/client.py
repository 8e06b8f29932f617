"""``meshserial use``: give a local application the remote port.

Modes: ``--pty`` creates a virtual serial port with a stable link; ``--listen HOST:PORT`` runs a local
RFC 2217 endpoint (for pyserial ``rfc2217://``, esptool, hub4com on Windows) relayed to the remote port.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meshserial import paths
from meshserial.errors import ConnectError, ConnectionLost, ProtocolError, UnknownServer, UsageError
from meshserial.keys import Identity, fingerprint, format_id
from meshserial.net.link import LinkOptions, PortLink
from meshserial.net.rfc2217_client import RemotePort, connect_rfc2217
from meshserial.net.secure import ClientConnection, TrustCheck
from meshserial.net.sharing import SharedPort
from meshserial.net.tcp import DEFAULT_PORT, format_hostport, parse_hostport
from meshserial.net.tcp import connect as tcp_connect
from meshserial.ports.pty import PTY_LIMITATIONS, PtyPort
from meshserial.proto import session as sess
from meshserial.proto.settings import SerialSettings
from meshserial.server import PlainServer, announce, load_identity_noting
from meshserial.trust import KnownServers

log = logging.getLogger(__name__)

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
    inner_factory: Callable[[], asyncio.Protocol] | None,
    timeout: float = 10.0,
) -> tuple[ClientConnection, sess.Accept | sess.Paired]:
    """TCP, Noise handshake, server check, then our request; returns the connection and the answer."""
    _, conn = await tcp_connect(
        host,
        port,
        lambda: ClientConnection(identity, request=request, inner_factory=inner_factory),
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


async def connect_target(target: Target, options: ConnectOptions | None = None) -> RemotePort:
    """Connect and return a :class:`RemotePort` whose RFC 2217 session is active."""
    where = format_hostport(target.host, target.port)
    if target.kind == "rfc2217":
        return await connect_rfc2217(target.host, target.port, name=where)
    options = options or ConnectOptions()
    identity = load_identity_noting()
    remote: RemotePort | None = None

    def make_remote() -> RemotePort:
        nonlocal remote
        remote = RemotePort(name=f"{target.name}@{where}")
        return remote

    hello = sess.Hello(port=target.name, mode="ro" if options.read_only else "rw")
    label = server_label(target.host, target.port)
    conn, answer = await connect_secure(
        target.host,
        target.port,
        identity=identity,
        request=hello,
        trust=trust_checker(label, options.trust),
        inner_factory=make_remote,
    )
    assert isinstance(answer, sess.Accept) and remote is not None
    try:
        async with asyncio.timeout(10.0):
            await remote.active
    except TimeoutError:
        conn.abort()
        raise ProtocolError(f"{target.name}@{where}: no RFC 2217 session inside the channel") from None
    log.info("session %s on %s (%s)", answer.session[:8], target.name, answer.mode)
    return remote


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    read_only: bool = False
    trust: TrustOptions = field(default_factory=TrustOptions)


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
    """Virtual serial port until interrupted or the connection ends."""
    link_path = link if link is not None else default_link(target.name)
    if link is None:
        paths.ensure_dir(link_path.parent)
    remote = await connect_target(target, options.connect)
    pty = PtyPort(link=link_path, settings=options.settings or SerialSettings())
    bridge = PortLink(pty, remote, options.link_options)
    try:
        await bridge.start()
        if options.settings is not None:
            remote.configure(options.settings)
        if options.dtr is not None or options.rts is not None:
            remote.set_control(dtr=options.dtr, rts=options.rts)
        # The link appears only once the session is up, so a script can wait for it.
        pty.create_link()
        announce(f"{pty.path}  (link: {link_path})")
        log.info("%s", PTY_LIMITATIONS)
        side, exc = await bridge.wait()
        if side is remote:
            raise ConnectionLost(f"connection to {remote.name} lost" + (f": {exc}" if exc else ""))
        return 0
    finally:
        await bridge.aclose()


async def run_gateway(target: Target, *, listen: tuple[str, int], options: UseOptions) -> int:
    """Local RFC 2217 endpoint relayed to the remote port."""
    remote = await connect_target(target, options.connect)
    shared = SharedPort(target.name, remote)
    server: PlainServer | None = None
    try:
        await shared.start()
        if options.settings is not None:
            remote.configure(options.settings)
        server = PlainServer([shared], *listen)
        await server.start()
        exc = await asyncio.shield(remote.lost)
        raise ConnectionLost(f"connection to {remote.name} lost" + (f": {exc}" if exc else ""))
    finally:
        if server is not None:
            await server.aclose()
        await shared.aclose()
