"""``meshserial share``: serve local serial ports.

One process serves every port it was given. In plain RFC 2217 mode (``--rfc2217 HOST:PORT``) each port
gets its own TCP listener, as with ser2net, and any client that can reach it may use it: that mode is
unauthenticated and meant for loopback or trusted links and legacy tools.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, assert_never

from meshserial import logonce
from meshserial.access import FileAuthorizer
from meshserial.addresses import format_hostport
from meshserial.advertise import PublishConfig, Publisher
from meshserial.errors import Refused, UsageError
from meshserial.keys import Identity, load_or_create_identity
from meshserial.net.listener import PlainListeners, close_listener, listen
from meshserial.net.rfc2217_server import Rfc2217ServerSession
from meshserial.net.secure import DEFAULT_KEEPALIVE, HANDSHAKE_TIMEOUT, ServerConnection
from meshserial.net.sharing import SCROLLBACK_BYTES, Mode, SharedPort
from meshserial.net.slots import HandshakeLimiter
from meshserial.net.stream import SessionStream
from meshserial.ports.factory import open_port
from meshserial.proto import session as sess
from meshserial.proto.sessions import Refuse, Resume, Session, SessionTable, Start, Why
from meshserial.proto.settings import SerialSettings
from meshserial.ratelimit import TokenBuckets
from meshserial.voice import Voice

log = logging.getLogger(__name__)
_log_once = logonce.LogOnce(log)

DEFAULT_DETACH_TIMEOUT = 60.0
# How long a background part (advertising, the revocation watch) may take to stop on shutdown: enough
# for a rendezvous withdrawal, which is bounded by its request timeout (5 s).
STOP_GRACE = 6.0


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
    keepalive: float = DEFAULT_KEEPALIVE
    detach_timeout: float = DEFAULT_DETACH_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    scrollback: int = SCROLLBACK_BYTES
    publish: PublishConfig = field(default_factory=PublishConfig)  # mDNS adverts, rendezvous


@dataclass(slots=True, kw_only=True, eq=False)
class LiveSession:
    """The asyncio side of a session the server keeps: its port, the stream adapter its RFC 2217
    session writes to, and the connection carrying it (``None`` while its client is away)."""

    session: Session
    shared: SharedPort
    stream: SessionStream
    conn: ServerConnection | None = None


class SecureServer:
    """One encrypted listener for every shared port; clients name the port inside the channel.

    Sessions outlive their connections: when a connection drops, the session keeps its place on the
    port (and the write lock) for ``detach_timeout`` seconds, buffering device output, so that the
    client can reconnect and resume it without losing a byte. Who may start, resume or replace a
    session, and when one expires, is decided by the sans-IO :class:`~meshserial.proto.sessions.SessionTable`;
    this class supplies the facts (rights, ports), carries the decisions out and arms the table's timer.
    """

    #: How often the allow-list file is looked at (expiries are met on time by the table's timer).
    ACCESS_CHECK = 1.0
    #: Invite attempts per source: a handful, then one a minute. Each costs a file lock and a write.
    INVITE_BURST = 5
    INVITE_RATE = 1 / 60

    def __init__(
        self,
        shared: list[SharedPort],
        identity: Identity,
        host: str,
        port: int,
        *,
        keepalive: float = DEFAULT_KEEPALIVE,
        detach_timeout: float = DEFAULT_DETACH_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._ports = {item.name: item for item in shared}
        self._identity = identity
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._handshake_timeout = handshake_timeout
        self._authorizer = FileAuthorizer()
        self._limiter = HandshakeLimiter()
        self._invite_attempts = TokenBuckets(self.INVITE_RATE, self.INVITE_BURST)
        self._table = SessionTable(detach_timeout=detach_timeout, new_id=lambda: secrets.token_hex(16))
        self._live: dict[str, LiveSession] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._connections: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    @property
    def identity(self) -> Identity:
        return self._identity

    async def start(self) -> list[str]:
        """Listen; returns a line for each port saying where it is served (the CLI prints them)."""
        self._server = await listen(self._host, self._port, self._new_connection)
        self.address = self._server.sockets[0].getsockname()[:2]
        where = format_hostport(self._host, self.address[1])
        return [f"sharing {name} on {where} as {self._identity.id_string}" for name in self._ports]

    def _new_connection(self) -> ServerConnection:
        conn = ServerConnection(
            self._identity,
            host=self,
            limiter=self._limiter,
            keepalive=self._keepalive,
            handshake_timeout=self._handshake_timeout,
        )
        self._connections.add(conn)
        return conn

    # ---- SessionHost -------------------------------------------------------------------------------

    def label(self, client_id: bytes) -> str:
        return self._authorizer.label(client_id)

    def redeem(self, conn: ServerConnection, redeem: sess.Redeem) -> str:
        assert conn.peer_id is not None and conn.handshake_hash is not None
        if self._invite_attempts.take(conn.source, time.monotonic()) > 0:
            _log_once.warning(
                conn.source,
                "too many invite attempts; refusing them for a while",
                repeats="invite attempts refused by the rate limit",
            )
            raise Refused("too many invite attempts from this address; try again in a minute")
        try:
            return self._authorizer.redeem(
                redeem.invite, redeem.proof, conn.handshake_hash, conn.peer_id, redeem.name
            )
        except Refused as exc:
            _log_once.warning(
                conn.source, "invite not accepted", str(exc.__cause__ or exc), repeats="failed invite proofs"
            )
            raise

    def hello(self, conn: ServerConnection, hello: sess.Hello) -> tuple[sess.Accept, SessionStream, int]:
        client = conn.peer_id
        assert client is not None
        shared = self._ports.get(hello.port)
        decision = self._table.admit(
            client,
            hello,
            rights=self._authorizer.rights(client, hello.port),
            port_exists=shared is not None,
            label=self.label,
            now=self._loop.time(),
        )
        match decision:
            case Refuse(reason=reason):
                raise Refused(reason)
            case Resume(session=session, lost=lost):
                live = self._live[session.id]
                return self._resume(live, conn, hello, lost), live.stream, hello.rx
            case Start(replaced=replaced):
                assert shared is not None
                for old, reason in replaced:
                    log.info("%s: %s", self.label(old.client), reason)
                    self._end_id(old.id, reason)
                return self._start(conn, hello, shared)
            case _:  # pragma: no cover - the three decisions above are all there is
                assert_never(decision)

    def _start(
        self, conn: ServerConnection, hello: sess.Hello, shared: SharedPort
    ) -> tuple[sess.Accept, SessionStream, int]:
        client = conn.peer_id
        assert client is not None
        mode = Mode.READ_WRITE if hello.mode == "rw" else Mode.READ_ONLY
        rfc = Rfc2217ServerSession(shared, mode=mode, label=self.label(client), attach=False)
        shared.attach(rfc, mode)  # Refused (port held by another writer) goes back to the client
        session = self._table.start(client, hello, expires_at=self._expiry(client))
        rfc.on_close = functools.partial(self._closed, session.id)
        rfc.end_with_reason = functools.partial(self._end_id, session.id)
        rfc.on_device = functools.partial(self._device_changed, session.id)
        stream = SessionStream(rfc, state=session.stream, on_detached=self._detached)
        self._live[session.id] = LiveSession(session=session, shared=shared, stream=stream, conn=conn)
        if hello.scrollback > 0:
            # Recent output goes first, right after the RFC 2217 opening, once the stream is carried.
            rfc.queue_scrollback(shared.recent_output(hello.scrollback))
        holder = shared.holder
        accept = self._table.accept(
            session,
            holder=holder.label if holder is not None and mode is Mode.READ_ONLY else None,
            device=shared.online,
        )
        self._arm()
        return accept, stream, 0

    def _resume(self, live: LiveSession, conn: ServerConnection, hello: sess.Hello, lost: int) -> sess.Accept:
        self._table.attached(live.session, hello.features)
        old = live.conn
        if old is not None and old is not conn:
            # The client knows its old connection is dead before we do: take the stream from it.
            old.release()
            old.abort()
        live.conn = conn
        log.info(
            "%s resumed its session on %s%s",
            self.label(live.session.client),
            live.shared.name,
            f" ({lost} bytes could not be kept)" if lost else "",
        )
        self._arm()
        return self._table.accept(live.session, lost=lost, device=live.shared.online)

    def _detached(self, stream: SessionStream, exc: BaseException | None) -> None:
        live = next((x for x in self._live.values() if x.stream is stream), None)
        if live is None:
            return
        live.conn = None
        self._table.detached(live.session, self._loop.time())
        log.info(
            "%s lost its connection to %s (%s); keeping the session for %g s",
            self.label(live.session.client),
            live.shared.name,
            exc,
            self._table.detach_timeout,
        )
        self._arm()

    def _end_id(self, session_id: str, reason: str) -> None:
        """End a session for good, telling its client ``reason`` now if it is connected, and when it
        tries to resume if it is not (or cannot hear it: a kicked watcher's connection is aborted)."""
        live = self._live.pop(session_id, None)
        if live is None:
            return
        self._table.ended(live.session, reason)
        live.stream.end(reason)
        self._arm()

    def _closed(self, session_id: str, _rfc: object = None) -> None:
        """The session's RFC 2217 side ended (the client closed it, or the port went away)."""
        if self._live.pop(session_id, None) is not None:
            self._table.forget(session_id)
            self._arm()

    def _device_changed(self, session_id: str, present: bool) -> None:
        """Tell a client whose hello asked for it that the device went away or came back (if it is
        connected now; one that resumes later finds the state in its ``accept``)."""
        live = self._live.get(session_id)
        if live is not None and live.conn is not None and sess.DEVICE_FEATURE in live.session.features:
            live.conn.send_control(sess.DeviceState(present=present))

    # ---- the table's timer (detach timeouts, access expiries) ----------------------------------------

    def _arm(self) -> None:
        at = self._table.next_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        for expired in self._table.handle_timer(self._loop.time()):
            live = self._live.pop(expired.session.id, None)
            if live is None:
                continue
            who = self.label(expired.session.client)
            if expired.why is Why.ACCESS_EXPIRED:
                log.warning("access expired of %s to %s; ending its session", who, live.shared.name)
                live.stream.end("access expired")
            else:
                log.info("session of %s on %s expired", who, live.shared.name)
                live.stream.ended_by_peer(None)
        self._arm()

    def _expiry(self, client: bytes) -> float | None:
        """When ``client``'s access ends, on the loop's clock (the file says it in wall-clock time)."""
        wall = self._authorizer.expires_at(client)
        return None if wall is None else self._loop.time() + (wall - time.time())

    # ---- revocation and shutdown -------------------------------------------------------------------

    async def watch_access(self) -> None:
        """Keep live sessions within the allow-list: a key removed or narrowed by ``meshserial revoke``
        or an edit of the file loses its sessions within :attr:`ACCESS_CHECK`; a new expiry applies at
        once. Also writes pending log summaries."""
        while True:
            await asyncio.sleep(self.ACCESS_CHECK)
            if self._authorizer.changed():
                self._enforce_access()
            logonce.flush_all()

    def _enforce_access(self) -> None:
        now = time.time()
        for live in list(self._live.values()):
            session = live.session
            session.expires_at = self._expiry(session.client)
            rights = self._authorizer.rights(session.client, live.shared.name, now)
            if rights is not None and (session.mode == "ro" or rights == "rw"):
                continue
            expires = self._authorizer.expires_at(session.client)
            reason = "access expired" if expires is not None and now >= expires else "access revoked"
            who = self.label(session.client)
            log.warning("%s of %s to %s; ending its session", reason, who, live.shared.name)
            self._end_id(session.id, reason)
        self._arm()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._timer is not None:
            self._timer.cancel()
        for live in list(self._live.values()):
            conn, live.conn = live.conn, None
            if conn is not None:
                conn.release()
                conn.go_away("server is shutting down")
            live.stream.ended_by_peer(None)  # ends the session here only; the client will reconnect
        self._live.clear()
        # Connections still in their handshake (or half-open floods) would otherwise keep
        # wait_closed() waiting for their deadline.
        for conn in list(self._connections):
            if not conn.closing:
                conn.abort()
        if self._server is not None:
            await close_listener(self._server)


async def run_share(config: ShareConfig, voice: Voice | None = None) -> int:
    """Open the devices, serve them until cancelled, then close everything. ``voice.say`` gets a line
    for each port once it is served (scripts wait for it), ``voice.note`` anything else to tell."""
    voice = voice or Voice()
    names = [d.name for d in config.devices]
    if len(set(names)) != len(names):
        raise UsageError(f"port names must be unique: {', '.join(names)}")
    if config.rfc2217 is None and config.listen is None:
        raise UsageError("nothing to serve on: give --listen HOST:PORT and/or --rfc2217 HOST:PORT")
    identity: Identity | None = None
    if config.listen is not None:
        identity, created = load_or_create_identity()
        if created:
            voice.note(f"created a new identity {identity.id_string}")
    shared: list[SharedPort] = []
    plain: PlainListeners | None = None
    secure: SecureServer | None = None
    try:
        for device in config.devices:
            port = open_port(device.spec, device.settings, wait=config.wait_for_device)
            item = SharedPort(device.name, port, scrollback=config.scrollback)
            await item.start()
            shared.append(item)
        if config.listen is not None:
            assert identity is not None
            secure = SecureServer(
                shared,
                identity,
                *config.listen,
                keepalive=config.keepalive,
                detach_timeout=config.detach_timeout,
                handshake_timeout=config.handshake_timeout,
            )
            for line in await secure.start():
                voice.say(line)
        if config.rfc2217 is not None:
            plain = PlainListeners(shared, *config.rfc2217)
            await plain.start()
            for name, url in plain.addresses:
                voice.say(f"sharing {name} on {url}")
        async with asyncio.TaskGroup() as tasks:
            if secure is not None:
                tasks.create_task(_stoppable(secure.watch_access(), "the access watch"))
                # Started after the listener is up: advertising never delays serving.
                tasks.create_task(_stoppable(_publisher(config, shared, secure, voice).run(), "advertising"))
            elif config.publish.rendezvous:
                log.warning("nothing to register with the rendezvous: only --rfc2217 is served")
            await asyncio.Event().wait()  # serve until cancelled (SIGINT/SIGTERM)
    finally:
        if secure is not None:
            await secure.aclose()
        if plain is not None:
            await plain.aclose()
        for item in shared:
            await item.aclose()
    return 0


async def _stoppable(coro: Coroutine[Any, Any, None], what: str, grace: float = STOP_GRACE) -> None:
    """Run ``coro`` in a task of its own; once cancelled, give it ``grace`` seconds to finish.

    Goodbyes and withdrawals take a moment, but a part that does not stop in time (a cancellation lost
    somewhere below) must not keep the sessions and devices from being closed: the server goes on
    without it, saying so.
    """
    task = asyncio.create_task(coro, name=f"meshserial: {what}")
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=grace)
        if not done:
            log.warning("%s did not stop within %g s; shutting down without it", what, grace)
        elif not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s failed while stopping: %s", what, exc)
        raise


def _publisher(
    config: ShareConfig, shared: list[SharedPort], secure: SecureServer, voice: Voice
) -> Publisher:
    assert secure.address is not None and config.listen is not None
    return Publisher(
        shared,
        {d.name: d.spec for d in config.devices},
        secure.identity,
        host=config.listen[0],
        tcp_port=secure.address[1],
        config=config.publish,
        announce=voice.say,
    )
