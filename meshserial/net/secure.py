"""The asyncio side of a secure connection: TCP in and out, one timer, and the events acted on.

Why: everything a meshserial connection decides — handshake, session control, acknowledgements,
keepalive, how its end affects the session — is the sans-IO :class:`~meshserial.proto.connection.Connection`.
:class:`SecureConnection` is its asyncio protocol, in the manner of aioquic's: after every input it
writes what the connection queued, re-arms the one timer the connection asks for
(:meth:`~meshserial.proto.connection.Connection.next_timer`), and hands session bytes to the
:class:`~meshserial.net.stream.SessionStream` it carries (which gives the RFC 2217 protocol a transport
that survives the connection: the RFC 2217 layer never sees ciphertext, and the channel never sees
serial settings).

Server (:class:`ServerConnection`): a client is authorized only after it has proven its key (Noise
message 3) and named the port in its hello; before that, nothing it sends reaches a port and it learns
nothing about the ports. The first failure of any kind closes the connection. Half-open connections
hold a slot of a :class:`~meshserial.net.slots.HandshakeLimiter` and have a deadline that shrinks as
the slots fill.

Client (:class:`ClientConnection`): verifies the server (the caller's trust check), then sends one
request and waits for the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from meshserial.errors import ConnectError, ConnectionLost, HandshakeError, MeshserialError, Refused
from meshserial.keys import Identity, verify_handshake_payload
from meshserial.logonce import LogOnce
from meshserial.net.slots import HandshakeLimiter
from meshserial.net.stream import SessionStream
from meshserial.net.tcp import ReceiveBuffer, tune_socket
from meshserial.proto import channel as ch
from meshserial.proto import connection as pc
from meshserial.proto import session as sess
from meshserial.ratelimit import source_key

log = logging.getLogger(__name__)
_log_once = LogOnce(log)
_denials = LogOnce(log, level=logging.INFO)  # one line per source and reason, repeats summarised

HANDSHAKE_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 9.0
CLOSE_GRACE = 5.0
CLOSE_FLUSH_LIMIT = 256 * 1024
#: What a telnet (RFC 2217) client that reached the encrypted port is told, in its own language.
WRONG_DOOR = (
    b"\r\nmeshserial: this is meshserial's encrypted service; use NAME@HOST:PORT "
    b"(plain RFC 2217 is served by share --rfc2217)\r\n"
)

# The clock asyncio's default loop reads, without the method call around it: the data path reads it
# on every record (keepalive bookkeeping).
_now = time.monotonic


class SecureConnection(ReceiveBuffer):
    """Common plumbing of both ends."""

    def __init__(
        self,
        identity: Identity,
        *,
        role: pc.Role,
        keepalive: float,
        handshake_deadline: float | None = None,
    ) -> None:
        channel = ch.SecureChannel(
            initiator=role is pc.Role.CLIENT,
            static_private=identity.noise_private,
            payload=identity.handshake_payload({"v": sess.VERSION}),
        )
        self._loop = asyncio.get_running_loop()
        self.conn = pc.Connection(
            channel,
            role=role,
            verify=verify_handshake_payload,
            keepalive=keepalive,
            now=_now(),
            handshake_deadline=handshake_deadline,
        )
        self.tcp: asyncio.Transport | None = None
        self.peer = "peer"
        self.stream: SessionStream | None = None
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    @property
    def peer_id(self) -> bytes | None:
        return self.conn.peer_id

    @property
    def handshake_hash(self) -> bytes | None:
        return self.conn.handshake_hash

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tcp = transport  # type: ignore[assignment]  # a selector or uvloop TCP transport
        tune_socket(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "peer"

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        try:
            # The channel copies what it keeps (partial frames) and decrypts the rest straight out of
            # the receive buffer.
            result = self.conn.receive(self._recv_view[:nbytes], _now())
            if type(result) is bytes:
                stream = self.stream
                assert stream is not None  # the connection counted the bytes in its stream
                stream.deliver(result)
            else:
                assert isinstance(result, list)
                while result:
                    self._events(result)
                    result = self.conn.more(_now())
        except MeshserialError as exc:
            self.fail(exc)
            return
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # connection_lost follows; it decides between "closed" and "lost"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.conn.abort()
        self._disarm()
        stream, self.stream = self.stream, None
        if stream is None:
            return
        match self.conn.ending():
            case pc.Ending.GONE_AWAY:
                stream.detach(ConnectionLost(f"the server went away: {self.conn.going_away}"))
            case pc.Ending.ENDED:
                # Ended on purpose, with the reason the peer gave (revoked, expired, replaced, too
                # slow): final for the client, which must not try to resume.
                reason = self.conn.end_reason
                stream.ended_by_peer(Refused(f"the server ended the session: {reason}") if reason else None)
            case pc.Ending.LOST:
                stream.detach(exc or ConnectionLost("connection ended without CLOSE"))

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.tcp_pause()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.tcp_resume()

    # ---- events ----------------------------------------------------------------------------------

    def _events(self, events: list[pc.Event]) -> None:
        for event in events:
            match event:
                case pc.Data(data=data):
                    assert self.stream is not None
                    self.stream.deliver(data)
                case pc.WindowOpened():
                    if self.stream is not None:
                        self.stream.window_opened()
                case pc.PeerClosed():
                    self.closing = True
                    self._flush()
                    if self.tcp is not None:
                        self.tcp.close()
                case pc.PeerSilent(silence=silence):
                    log.warning("%s: nothing heard for %.1f s; dropping the connection", self.peer, silence)
                    self.abort()
                case _:
                    self.event(event)

    def event(self, event: pc.Event) -> None:
        """An event for one end only (identification, request, answer…)."""

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.closing:
            return
        self._events(self.conn.handle_timer(_now()))
        self._flush()

    def _flush(self) -> None:
        tcp = self.tcp
        out = self.conn.data_to_send()
        if out and tcp is not None and not tcp.is_closing():
            tcp.write(out)
        at = self.conn.next_timer()
        if at != self._timer_at and not self.closing:
            self._disarm()
            if at is not None:
                self._timer_at = at
                # The loop's clock and time.monotonic() are the same clock (asyncio's default).
                self._timer = self._loop.call_at(at, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None

    # ---- Carrier (used by SessionStream) ---------------------------------------------------------

    def send_stream(self, data: bytes) -> None:
        wire = self.conn.seal(data, _now())
        tcp = self.tcp
        if wire is not None and tcp is not None:
            tcp.write(wire)

    def carry(self, stream: SessionStream, peer_received: int) -> int:
        """Carry ``stream`` from now on; returns the bytes the peer can no longer get."""
        self.stream = stream
        lost = self.conn.carry(stream.state, peer_received, _now())
        self._flush()
        return lost

    def release(self) -> SessionStream | None:
        """Give up the stream without ending the session (a newer connection resumes it)."""
        stream, self.stream = self.stream, None
        self.conn.release()
        return stream

    def close(self, reason: str | None = None) -> None:
        """End the connection cleanly (a reason is sent first, when there is one).

        A clean close waits for the send buffer to drain, which takes forever if the peer stopped
        reading: a peer that has not taken what is queued within :data:`CLOSE_GRACE` is cut off, and
        one with more than :data:`CLOSE_FLUSH_LIMIT` queued is cut off at once (it would not read the
        reason behind all that in time anyway), so that a closed connection never holds memory long.
        """
        if self.closing:
            return
        self.conn.close(reason)
        self._flush()
        self.closing = True
        self._disarm()
        tcp = self.tcp
        if tcp is not None:
            if tcp.get_write_buffer_size() > CLOSE_FLUSH_LIMIT:
                tcp.abort()
                return
            tcp.close()
            self._timer = self._loop.call_later(CLOSE_GRACE, tcp.abort)  # connection_lost cancels it

    def go_away(self, reason: str) -> None:
        """Tell the client we are stopping (it will reconnect), then close."""
        if self.closing:
            return
        self.conn.go_away(reason)
        self.close()

    def tcp_pause_reading(self) -> None:
        if self.tcp is not None and not self.closing:
            self.tcp.pause_reading()

    def tcp_resume_reading(self) -> None:
        if self.tcp is not None and not self.closing:
            self.tcp.resume_reading()

    def tcp_info(self, name: str, default: Any = None) -> Any:
        return self.tcp.get_extra_info(name, default) if self.tcp is not None else default

    def tcp_buffer_size(self) -> int:
        return self.tcp.get_write_buffer_size() if self.tcp is not None else 0

    def send_control(self, message: sess.Message) -> None:
        self.conn.send_control(message, _now())
        self._flush()

    def abort(self) -> None:
        self.closing = True
        self.conn.abort()
        self._disarm()
        if self.tcp is not None:
            self.tcp.abort()

    def fail(self, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, MeshserialError) else type(exc).__name__
        _log_once.warning(source_key(self.peer.rsplit(":", 1)[0]), f"closing connection: {reason}")
        self.abort()


# ---- server --------------------------------------------------------------------------------------


class SessionHost(Protocol):
    """The server's side of sessions: access policy and the live sessions."""

    def hello(self, conn: ServerConnection, hello: sess.Hello) -> tuple[sess.Accept, SessionStream, int]:
        """Authorize ``hello`` from ``conn.peer_id`` and find or start its session; return the
        ``accept`` to send, the stream ``conn`` must carry and how much of it the client already has
        (its ``rx`` when resuming, 0 for a new session). Raise :class:`Refused` with a reason for the
        client."""

    def redeem(self, conn: ServerConnection, redeem: sess.Redeem) -> str:
        """Check an invite proof and authorize the client; return the rights granted, or raise Refused."""

    def label(self, client_id: bytes) -> str:
        """A short human name for logs."""


class ServerConnection(SecureConnection):
    """The server end: handshake, authorization, then a session on the chosen port."""

    def __init__(
        self,
        identity: Identity,
        *,
        host: SessionHost,
        limiter: HandshakeLimiter,
        keepalive: float = DEFAULT_KEEPALIVE,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        super().__init__(identity, role=pc.Role.SERVER, keepalive=keepalive)
        self._host = host
        self._limiter = limiter
        self._handshake_timeout = handshake_timeout
        self.source = ""
        self.started = 0.0
        self._pending = False
        self.port_name: str | None = None
        self.mode: str | None = None

    @property
    def progress(self) -> int:
        return self.conn.progress

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.source = source_key(self.peer.rsplit(":", 1)[0])
        self.started = _now()
        if not self._limiter.welcome(self.source, self.started):
            _log_once.warning(
                self.source,
                "too many failed handshakes; closing new connections for a while",
                repeats="connections closed at once (too many failed handshakes)",
            )
            self.abort()
            return
        self._pending = True
        self._limiter.admit(self)
        if self._pending:  # not evicted by its own admission (a limit of zero)
            self.conn.set_handshake_deadline(self.started + self._limiter.deadline(self._handshake_timeout))
            self._flush()

    def evict(self) -> None:
        """The limiter gave our slot to a newer connection."""
        self._pending = False
        self._limiter.wasted(self.source, _now())
        _log_once.warning(
            self.source,
            "handshake slots full; closing the slowest half-open connections",
            repeats="half-open connections closed to make room",
        )
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settled()
        super().connection_lost(exc)

    def _settled(self) -> None:
        if self._pending:
            self._pending = False
            self._limiter.release(self)
            if self.peer_id is None:  # ended before the client proved its key: a wasted slot
                self._limiter.wasted(self.source, _now())

    def event(self, event: pc.Event) -> None:
        match event:
            case pc.TelnetSpoken():
                # A telnet client speaks first, starting with IAC: someone pointed a plain RFC 2217
                # client (pyserial's rfc2217://, ser2net's, `use rfc2217://`) at the encrypted port.
                # Tell it in a line it can show; it learns nothing that mDNS does not already say.
                _log_once.warning(self.source, "a plain RFC 2217 client reached the encrypted port")
                self._settled()
                self.closing = True
                self.conn.abort()
                if self.tcp is not None:
                    self.tcp.write(WRONG_DOOR)
                    self.tcp.close()
            case pc.HandshakeTimedOut():
                _log_once.warning(
                    self.source, "handshake not completed in time", repeats="handshakes timed out"
                )
                self.abort()
            case pc.Request(message=message):
                self._settled()
                self._request(message)
            case _:
                pass  # Identified: authorization waits for the request, which names the port

    def _request(self, message: sess.Hello | sess.Redeem) -> None:
        match message:
            case sess.Hello():
                try:
                    accept, stream, client_has = self._host.hello(self, message)
                except Refused as exc:
                    self._deny(str(exc))
                    return
                self.port_name = message.port
                self.mode = message.mode
                self.send_control(accept)  # before any DATA: the client starts its stream on it
                stream.attach(self, client_has)
            case sess.Redeem():
                try:
                    granted = self._host.redeem(self, message)
                except Refused as exc:
                    self._deny(str(exc))
                    return
                self.send_control(sess.Paired(ports=granted))
                self.close()

    def _deny(self, reason: str) -> None:
        # Keyed by source, not by key: anyone can mint keys, so per-key lines would be a flood.
        label = self._host.label(self.peer_id or b"")
        _denials.warning(self.source, f"denied: {reason}", label, repeats=f"denials ({reason})")
        self.send_control(sess.Deny(reason=reason))
        self.close()


# ---- client --------------------------------------------------------------------------------------


class ClientConnection(SecureConnection):
    """The client end: verify the server, then send one request and wait for the answer."""

    def __init__(
        self,
        identity: Identity,
        *,
        request: sess.Hello | Callable[[bytes], sess.Message],
        stream_for: Callable[[ClientConnection, sess.Accept], None] | None = None,
        keepalive: float = DEFAULT_KEEPALIVE,
    ) -> None:
        super().__init__(identity, role=pc.Role.CLIENT, keepalive=keepalive)
        self._request = request
        self._stream_for = stream_for
        self.server_identified: asyncio.Future[bytes] = self._loop.create_future()
        #: Told when the server says its device went away or came back.
        self.on_device: Callable[[bool], None] | None = None
        self.answer: asyncio.Future[sess.Accept | sess.Paired] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.initiate()
        self._flush()

    def proceed(self) -> None:
        """The caller trusts the server: send msg3 and our request."""
        self._events(self.conn.accept_peer(_now()))
        message: sess.Message
        if isinstance(self._request, sess.Hello):
            message = self._request
        else:
            # A request bound to this session (an invite proof) needs the handshake hash first.
            assert self.handshake_hash is not None
            message = self._request(self.handshake_hash)
        self.send_control(message)

    def event(self, event: pc.Event) -> None:
        match event:
            case pc.Identified(peer_id=peer_id):
                if not self.server_identified.done():
                    self.server_identified.set_result(peer_id)
            case pc.Answer(message=sess.Accept() as accept):
                # Carry the stream before returning: the server's first bytes may follow in this read.
                if self._stream_for is not None:
                    self._stream_for(self, accept)
                if not self.answer.done():
                    self.answer.set_result(accept)
            case pc.Answer(message=sess.Paired() as paired):
                if not self.answer.done():
                    self.answer.set_result(paired)
            case pc.Answer(message=sess.Deny(reason=reason)):
                _set_exception(self.answer, Refused(reason))
            case pc.DeviceChanged(present=present):
                if self.on_device is not None:
                    self.on_device(present)
            case pc.TelnetSpoken():
                # A telnet server speaks first, and its first byte is IAC: a plain RFC 2217 server.
                self.fail(ConnectError(f"{self.peer} is a plain RFC 2217 server: use rfc2217://{self.peer}"))
            case _:
                pass

    def fail(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, MeshserialError) else HandshakeError(str(exc))
        if isinstance(error, HandshakeError) and self.peer_id is None:
            error = HandshakeError(f"{self.peer} is not a meshserial server ({error})")
        for fut in (self.server_identified, self.answer):
            _set_exception(fut, error)
        # The caller reports the error; a log line too would say it twice.
        log.debug("%s: closing connection: %s", self.peer, exc)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionLost("the server closed the connection")
        for fut in (self.server_identified, self.answer):
            _set_exception(fut, lost)
        super().connection_lost(exc)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved here: whoever awaits still gets it, nobody gets a warning
