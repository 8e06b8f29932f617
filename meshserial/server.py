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
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from meshserial import logonce
from meshserial.access import FileAuthorizer
from meshserial.advertise import PublishConfig, Publisher
from meshserial.errors import Refused, UsageError
from meshserial.keys import Identity, load_or_create_identity
from meshserial.net.listener import PlainListeners, close_listener, listen
from meshserial.net.rfc2217_server import Rfc2217ServerSession
from meshserial.net.secure import DEFAULT_KEEPALIVE, HANDSHAKE_TIMEOUT, ServerConnection
from meshserial.net.sharing import SCROLLBACK_BYTES, Mode, SharedPort
from meshserial.net.slots import HandshakeLimiter
from meshserial.net.stream import SessionStream
from meshserial.net.tcp import format_hostport
from meshserial.ports.factory import open_port
from meshserial.proto import session as sess
from meshserial.proto.settings import SerialSettings
from meshserial.ratelimit import TokenBuckets

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


def announce(line: str) -> None:
    """A line for humans and scripts on stdout, flushed at once (tests wait for it)."""
    print(line, flush=True)


@dataclass(slots=True, kw_only=True, eq=False)
class LiveSession:
    """A session the server keeps, attached to a connection or waiting for its client to come back."""

    id: str
    client_id: bytes
    shared: SharedPort
    mode: Mode
    stream: SessionStream
    detach_timer: asyncio.TimerHandle | None = None
    detached_at: float | None = None  # loop time at which the connection dropped
    conn: ServerConnection | None = None
    features: tuple[str, ...] = ()  # what the client said it understands (hello)


class SecureServer:
    """One encrypted listener for every shared port; clients name the port inside the channel.

    Sessions outlive their connections: when a connection drops, the session keeps its place on the
    port (and the write lock) for ``detach_timeout`` seconds, buffering device output, so that the
    client can reconnect and resume it without losing a byte.
    """

    #: How often the allow-list file is looked at (expiries are also met on time, see watch_access).
    ACCESS_CHECK = 1.0
    #: Sessions (attached or waiting for their client) one identity may have, and all together.
    MAX_SESSIONS_PER_CLIENT = 16
    MAX_SESSIONS = 128
    #: Invite attempts per source: a handful, then one a minute. Each costs a file lock and a write.
    INVITE_BURST = 5
    #: Reasons of ended sessions remembered for their clients (oldest forgotten first).
    MAX_ENDED = 1024
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
        self._detach_timeout = detach_timeout
        self._handshake_timeout = handshake_timeout
        self._authorizer = FileAuthorizer()
        self._limiter = HandshakeLimiter()
        self._invite_attempts = TokenBuckets(self.INVITE_RATE, self.INVITE_BURST)
        self._sessions: dict[str, LiveSession] = {}
        # Why recently ended sessions ended (session id -> client, reason), for clients that try to resume.
        self._ended: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._connections: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    @property
    def identity(self) -> Identity:
        return self._identity

    async def start(self) -> None:
        self._server = await listen(self._host, self._port, self._new_connection)
        self.address = self._server.sockets[0].getsockname()[:2]
        where = format_hostport(self._host, self.address[1])
        for name in self._ports:
            announce(f"sharing {name} on {where} as {self._identity.id_string}")

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
        rights = self._authorizer.rights(client, hello.port)
        if rights is None:
            # Same answer whether the port exists or not: an unknown key learns nothing.
            raise Refused(f"not authorized for port {hello.port!r}")
        if hello.mode == "rw" and rights != "rw":
            raise Refused(f"read-only access to {hello.port}: connect with --read-only")
        shared = self._ports.get(hello.port)
        if shared is None:
            raise Refused(f"no port named {hello.port!r} here")
        mode = Mode.READ_WRITE if hello.mode == "rw" else Mode.READ_ONLY
        live = self._sessions.get(hello.session) if hello.session else None
        if live is not None and live.client_id == client and live.shared is shared and live.mode is mode:
            return self._resume(live, conn, hello), live.stream, hello.rx
        ended = self._ended.get(hello.session) if hello.session else None
        if ended is not None and ended[0] == client:
            raise Refused(ended[1])  # why its session ended, for a client that could not be told
        if mode is Mode.READ_WRITE:
            self._make_room(client, shared, takeover=hello.takeover)
        mine = sum(1 for x in self._sessions.values() if x.client_id == client)
        if mine >= self.MAX_SESSIONS_PER_CLIENT:
            raise Refused(f"too many sessions of yours on this server ({mine}); end some first")
        if len(self._sessions) >= self.MAX_SESSIONS:
            raise Refused("this server has too many sessions; try again later")
        return self._start(conn, hello, shared, mode)

    def _make_room(self, client: bytes, shared: SharedPort, *, takeover: bool) -> None:
        """Before a new read-write session: end the holder's session where the rules allow it.

        A client's own session that lost its connection is replaced at once (the client crashed or was
        killed: waiting for the detach timeout would lock it out of its own port). Its own live
        session, or another client's session that lost its connection, only with ``takeover``; another
        client's live session never. Whatever still holds the port is then refused by the port itself.
        """
        holder = next(
            (x for x in self._sessions.values() if x.shared is shared and x.mode is Mode.READ_WRITE), None
        )
        if holder is None:
            return
        detached = holder.conn is None
        label = self.label(holder.client_id)
        if holder.client_id == client and (detached or takeover):
            state = "detached" if detached else "live"
            log.info("%s replaces its own %s session on %s", label, state, shared.name)
            self._end(holder, "replaced by a new session of the same client")
            return
        if holder.client_id == client:
            raise Refused(
                f"port {shared.name} is in use by another session of yours; "
                "stop it, or connect with --takeover to replace it"
            )
        if detached and takeover:
            log.info(
                "%s takes over %s from %s, whose connection was lost", self.label(client), shared.name, label
            )
            self._end(holder, f"taken over by {self.label(client)}")
            return
        if detached:
            assert holder.detached_at is not None
            away = asyncio.get_running_loop().time() - holder.detached_at
            left = max(0.0, self._detach_timeout - away)
            raise Refused(
                f"port {shared.name} is held by {label}, whose connection was lost {away:.0f} s ago "
                f"(kept {left:.0f} s more for it to resume); connect with --takeover to take it over"
            )

    def _start(
        self, conn: ServerConnection, hello: sess.Hello, shared: SharedPort, mode: Mode
    ) -> tuple[sess.Accept, SessionStream, int]:
        client = conn.peer_id
        assert client is not None
        session_id = secrets.token_hex(16)
        rfc = Rfc2217ServerSession(
            shared,
            mode=mode,
            label=self._authorizer.label(client),
            attach=False,
            on_close=lambda _s: self._forget(session_id),
        )
        shared.attach(rfc, mode)  # Refused (port held by another writer) goes back to the client
        stream = SessionStream(rfc, on_detached=self._detached)
        rfc.end_with_reason = functools.partial(self._end_id, session_id)
        rfc.on_device = functools.partial(self._device_changed, session_id)
        live = LiveSession(
            id=session_id,
            client_id=client,
            shared=shared,
            mode=mode,
            stream=stream,
            conn=conn,
            features=hello.features,
        )
        self._sessions[session_id] = live
        if hello.scrollback > 0:
            # Recent output goes first, right after the RFC 2217 opening, once the stream is carried.
            rfc.queue_scrollback(shared.recent_output(hello.scrollback))
        holder = shared.holder
        return (
            sess.Accept(
                port=hello.port,
                mode=hello.mode,
                session=session_id,
                holder=holder.label if holder is not None and mode is Mode.READ_ONLY else None,
                device=shared.online,
            ),
            stream,
            0,
        )

    def _resume(self, live: LiveSession, conn: ServerConnection, hello: sess.Hello) -> sess.Accept:
        if live.detach_timer is not None:
            live.detach_timer.cancel()
            live.detach_timer = None
        live.detached_at = None
        old = live.conn
        if old is not None and old is not conn:
            # The client knows its old connection is dead before we do: take the stream from it.
            old.release()
            old.abort()
        live.conn = conn
        lost = max(0, live.stream.replay.start - hello.rx)
        log.info(
            "%s resumed its session on %s%s",
            self.label(live.client_id),
            live.shared.name,
            f" ({lost} bytes could not be kept)" if lost else "",
        )
        live.features = hello.features
        return sess.Accept(
            port=hello.port,
            mode=hello.mode,
            session=live.id,
            rx=live.stream.counter.received,
            tx=live.stream.replay.sent,
            lost=lost,
            device=live.shared.online,
        )

    def _detached(self, stream: SessionStream, exc: BaseException | None) -> None:
        live = next((x for x in self._sessions.values() if x.stream is stream), None)
        if live is None:
            return
        live.conn = None
        log.info(
            "%s lost its connection to %s (%s); keeping the session for %g s",
            self.label(live.client_id),
            live.shared.name,
            exc,
            self._detach_timeout,
        )
        loop = asyncio.get_running_loop()
        live.detached_at = loop.time()
        live.detach_timer = loop.call_later(self._detach_timeout, self._expire, live)

    def _expire(self, live: LiveSession) -> None:
        live.detach_timer = None
        log.info("session of %s on %s expired", self.label(live.client_id), live.shared.name)
        live.stream.ended_by_peer(None)
        self._forget(live.id)

    def _end(self, live: LiveSession, reason: str) -> None:
        """End ``live`` for good, telling its client ``reason`` now if it is connected, and when it
        tries to resume if it is not (or cannot hear it: a kicked watcher's connection is aborted)."""
        self._ended[live.id] = (live.client_id, reason)
        while len(self._ended) > self.MAX_ENDED:
            self._ended.popitem(last=False)
        live.stream.end(reason)
        self._forget(live.id)

    def _device_changed(self, session_id: str, present: bool) -> None:
        """Tell a client whose hello asked for it that the device went away or came back (if it is
        connected now; one that resumes later finds the state in its ``accept``)."""
        live = self._sessions.get(session_id)
        if live is not None and live.conn is not None and sess.DEVICE_FEATURE in live.features:
            live.conn.send_control(sess.DeviceState(present=present))

    def _end_id(self, session_id: str, reason: str) -> None:
        if (live := self._sessions.get(session_id)) is not None:
            self._end(live, reason)

    def _forget(self, session_id: str) -> None:
        live = self._sessions.pop(session_id, None)
        if live is not None and live.detach_timer is not None:
            live.detach_timer.cancel()

    # ---- revocation and shutdown -------------------------------------------------------------------

    async def watch_access(self) -> None:
        """Keep live sessions within the allow-list: a key removed or narrowed by ``meshserial revoke``
        or an edit of the file loses its sessions within :attr:`ACCESS_CHECK`; an entry that expires
        ends its sessions at the expiry time, file change or not. Also writes pending log summaries."""
        while True:
            await asyncio.sleep(self._next_access_check())
            self._authorizer.changed()
            self._enforce_access()
            logonce.flush_all()

    def _next_access_check(self) -> float:
        wait = self.ACCESS_CHECK
        now = time.time()
        for live in self._sessions.values():
            expires = self._authorizer.expires_at(live.client_id)
            if expires is not None:
                # A hair past the instant: the entry must have expired when we look.
                wait = min(wait, max(0.0, expires - now) + 0.005)
        return wait

    def _enforce_access(self) -> None:
        now = time.time()
        for live in list(self._sessions.values()):
            rights = self._authorizer.rights(live.client_id, live.shared.name, now)
            if rights is not None and (live.mode is Mode.READ_ONLY or rights == "rw"):
                continue
            expires = self._authorizer.expires_at(live.client_id)
            reason = "access expired" if expires is not None and now >= expires else "access revoked"
            log.warning(
                "%s of %s to %s; ending its session", reason, self.label(live.client_id), live.shared.name
            )
            self._end(live, reason)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for live in list(self._sessions.values()):
            conn, live.conn = live.conn, None
            if conn is not None:
                conn.release()
                conn.go_away("server is shutting down")
            live.stream.ended_by_peer(None)  # ends the session here only; the client will reconnect
        self._sessions.clear()
        # Connections still in their handshake (or half-open floods) would otherwise keep
        # wait_closed() waiting for their deadline.
        for conn in list(self._connections):
            if not conn.closing:
                conn.abort()
        if self._server is not None:
            await close_listener(self._server)


async def run_share(config: ShareConfig) -> int:
    """Open the devices, serve them until cancelled, then close everything."""
    names = [d.name for d in config.devices]
    if len(set(names)) != len(names):
        raise UsageError(f"port names must be unique: {', '.join(names)}")
    if config.rfc2217 is None and config.listen is None:
        raise UsageError("nothing to serve on: give --listen HOST:PORT and/or --rfc2217 HOST:PORT")
    identity = load_identity_noting() if config.listen is not None else None
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
            await secure.start()
        if config.rfc2217 is not None:
            plain = PlainListeners(shared, *config.rfc2217)
            await plain.start()
            for name, url in plain.addresses:
                announce(f"sharing {name} on {url}")
        async with asyncio.TaskGroup() as tasks:
            if secure is not None:
                tasks.create_task(_stoppable(secure.watch_access(), "the access watch"))
                # Started after the listener is up: advertising never delays serving.
                tasks.create_task(_stoppable(_publisher(config, shared, secure).run(), "advertising"))
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


def _publisher(config: ShareConfig, shared: list[SharedPort], secure: SecureServer) -> Publisher:
    assert secure.address is not None and config.listen is not None
    return Publisher(
        shared,
        {d.name: d.spec for d in config.devices},
        secure.identity,
        host=config.listen[0],
        tcp_port=secure.address[1],
        config=config.publish,
        announce=announce,
    )


def load_identity_noting() -> Identity:
    """This machine's identity, created on first use with a note on stderr."""
    identity, created = load_or_create_identity()
    if created:
        print(f"meshserial: created a new identity {identity.id_string}", file=sys.stderr, flush=True)
    return identity
