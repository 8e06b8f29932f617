"""The secure channel on a TCP connection, carrying one resumable session.

``SecureConnection`` is the asyncio protocol of one TCP connection. It feeds the sans-IO
:class:`~meshserial.proto.channel.SecureChannel`, runs the session control exchange (hello / accept /
deny / ack) and carries a :class:`~meshserial.net.stream.SessionStream`, which in turn gives the RFC 2217
protocol a transport that survives the connection: the RFC 2217 layer never sees ciphertext, and the
channel never sees serial settings.

Server: a client is authorized only after it has proven its key (Noise message 3) and named the port
in its hello; before that, nothing it sends reaches a port and it learns nothing about the ports. The
first failure of any kind closes the connection. Unauthenticated handshakes are bounded per source
address and in total, and each has a deadline; when the slots are full, the half-open connection that
got least far gives way to the newcomer (:class:`HandshakeLimiter`), so floods and slow clients cannot
starve others.

Keepalive: once the session runs, each side pings after ``keepalive / 3`` seconds without traffic
and drops the connection after ``keepalive`` seconds of silence from the peer, so a dead path is noticed
within that time on both sides (TCP alone may take minutes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from meshserial.errors import (
    ConnectError,
    ConnectionLost,
    HandshakeError,
    MeshserialError,
    ProtocolError,
    Refused,
)
from meshserial.keys import Identity, verify_handshake_payload
from meshserial.logonce import LogOnce
from meshserial.net.slots import HandshakeLimiter
from meshserial.net.stream import SessionStream
from meshserial.net.tcp import ReceiveBuffer, tune_socket
from meshserial.proto import channel as ch
from meshserial.proto import session as sess
from meshserial.ratelimit import source_key

log = logging.getLogger(__name__)
_log_once = LogOnce(log)
_denials = LogOnce(log, level=logging.INFO)  # one line per client and reason, repeats summarised

HANDSHAKE_TIMEOUT = 10.0
DEFAULT_KEEPALIVE = 9.0
CLOSE_GRACE = 5.0
CLOSE_FLUSH_LIMIT = 256 * 1024
TELNET_IAC = 0xFF
#: What a telnet (RFC 2217) client that reached the encrypted port is told, in its own language.
WRONG_DOOR = (
    b"\r\nmeshserial: this is meshserial's encrypted service; use NAME@HOST:PORT "
    b"(plain RFC 2217 is served by share --rfc2217)\r\n"
)

# Traffic timestamps for the keepalive, taken on every record: the clock asyncio's default loop reads,
# without the method call around it. ``_keepalive_tick`` compares them with ``loop.time()``.
_now = time.monotonic


class SecureConnection(ReceiveBuffer):
    """Common plumbing of both ends."""

    def __init__(
        self, identity: Identity, *, initiator: bool, payload: dict[str, Any], keepalive: float
    ) -> None:
        self._channel = ch.SecureChannel(
            initiator=initiator,
            static_private=identity.noise_private,
            payload=identity.handshake_payload(payload),
        )
        self._loop = asyncio.get_running_loop()
        self.tcp: asyncio.Transport | None = None
        self.peer = "peer"
        self.peer_id: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.stream: SessionStream | None = None
        self.closing = False
        self.reading = True
        self.end_reason: str | None = None  # what the peer said when it ended the session
        self.going_away: str | None = None  # the server announced it is stopping
        self._peer_closed = False
        self._keepalive = keepalive
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._last_rx = _now()
        self._last_tx = self._last_rx

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tcp = transport
        tune_socket(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "peer"

    def buffer_updated(self, nbytes: int) -> None:
        if self._peer_closed:
            return
        self._last_rx = _now()
        try:
            # The channel copies what it keeps (partial frames) and decrypts the rest straight out of
            # the receive buffer.
            result = self._channel.receive_fast(self._recv_view[:nbytes])
            if type(result) is bytes:
                # The data path: one read, one DATA record.
                stream = self.stream
                if stream is None:
                    raise ProtocolError("data before the session was accepted")
                stream.data_received(result)
                return
            assert isinstance(result, list)
            for event in result:
                self.handle_event(event)
        except MeshserialError as exc:
            self.fail(exc)
            return
        self.flush()

    def telnet_first(self, state: ch.ChannelState, nbytes: int) -> bool:
        """Whether the peer's first bytes, in handshake ``state``, start with telnet's IAC (0xFF): no
        Noise message does (a length prefix that large is refused), every telnet opening does."""
        return (
            self._channel.state is state
            and nbytes > 0
            and not self._channel.bytes_buffered
            and self._recv_view[0] == TELNET_IAC
        )

    def eof_received(self) -> bool | None:
        return None  # connection_lost follows; it decides between "closed" and "lost"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._stop_keepalive()
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if self.going_away is not None:
            stream.detach(ConnectionLost(f"the server went away: {self.going_away}"))
        elif self._peer_closed:
            # Ended on purpose, with the reason the peer gave (revoked, expired, replaced, too slow):
            # final for the client, which must not try to resume.
            reason = self.end_reason
            stream.ended_by_peer(Refused(f"the server ended the session: {reason}") if reason else None)
        else:
            stream.detach(exc or ConnectionLost("connection ended without CLOSE"))

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.tcp_pause()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.tcp_resume()

    # ---- events ----------------------------------------------------------------------------------

    def handle_event(self, event: ch.ChannelEvent) -> None:
        match event:
            case ch.DataReceived(data=data):
                if self.stream is None:
                    raise ProtocolError("data before the session was accepted")
                self.stream.data_received(data)
            case ch.ControlReceived(message=message):
                msg = sess.decode(message)
                if isinstance(msg, sess.Ack):
                    if self.stream is None:
                        raise ProtocolError("ack outside a session")
                    self.stream.ack_received(msg.offset)
                elif isinstance(msg, sess.Deny) and self.stream is not None:
                    self.end_reason = msg.reason  # the session is being ended; CLOSE follows
                elif isinstance(msg, sess.GoAway):
                    self.going_away = msg.reason  # the server stops; CLOSE follows, then reconnect
                else:
                    self.control(msg)
            case ch.Closed():
                self._peer_closed = True
                self.closing = True
                self.flush()
                if self.tcp is not None:
                    self.tcp.close()
            case ch.PeerIdentified(remote_static=remote_static, payload=payload):
                self.peer_id, extra = verify_handshake_payload(payload, remote_static)
                self.identified(self.peer_id, extra)
            case ch.HandshakeComplete(handshake_hash=handshake_hash):
                self.handshake_hash = handshake_hash
            case ch.PingReceived() | ch.PongReceived():
                pass

    def identified(self, peer_id: bytes, extra: dict[str, Any]) -> None:
        """The peer proved ``peer_id``."""

    def control(self, message: sess.Message) -> None:
        """A session control message other than ``ack`` arrived."""

    # ---- Carrier (used by SessionStream) ---------------------------------------------------------

    def send_plain(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            wire = self._channel.seal_data(data)
        except MeshserialError:
            # Records decrypted in the same read as the peer's CLOSE are still delivered; replies to
            # them have nowhere to go once the channel is closed (or has failed).
            return
        tcp = self.tcp
        if tcp is not None:
            self._last_tx = _now()
            tcp.write(wire)

    def send_ack(self, offset: int) -> None:
        if not self.closing and self._channel.state is ch.ChannelState.ESTABLISHED:
            self.send_control(sess.Ack(offset=offset))

    def close(self, reason: str | None = None) -> None:
        """End the connection cleanly (a reason is sent first, when there is one).

        A clean close waits for the send buffer to drain, which takes forever if the peer stopped
        reading: a peer that has not taken what is queued within :data:`CLOSE_GRACE` is cut off, and
        one with more than :data:`CLOSE_FLUSH_LIMIT` queued is cut off at once (it would not read the
        reason behind all that in time anyway), so that a closed connection never holds memory long.
        """
        if self.closing:
            return
        self.closing = True
        self._stop_keepalive()
        try:
            if self._channel.established:
                if reason:
                    self._channel.send_control(sess.encode(sess.Deny(reason=reason)))
                self._channel.close()
                self.flush()
        except MeshserialError:
            pass
        tcp = self.tcp
        if tcp is not None:
            if tcp.get_write_buffer_size() > CLOSE_FLUSH_LIMIT:
                tcp.abort()
                return
            tcp.close()
            # In the keepalive's timer slot, which connection_lost clears.
            self._keepalive_timer = self._loop.call_later(CLOSE_GRACE, tcp.abort)

    def go_away(self, reason: str) -> None:
        """Tell the client we are stopping (it will reconnect), then close."""
        if self.closing:
            return
        try:
            if self._channel.state is ch.ChannelState.ESTABLISHED:
                self._channel.send_control(sess.encode(sess.GoAway(reason=reason)))
        except MeshserialError:
            pass
        self.close()

    def tcp_pause_reading(self) -> None:
        if self.tcp is not None and self.reading and not self.closing:
            self.reading = False
            self.tcp.pause_reading()

    def tcp_resume_reading(self) -> None:
        if self.tcp is not None and not self.reading and not self.closing:
            self.reading = True
            self.tcp.resume_reading()

    def tcp_info(self, name: str, default: Any = None) -> Any:
        return self.tcp.get_extra_info(name, default) if self.tcp is not None else default

    def tcp_buffer_size(self) -> int:
        return self.tcp.get_write_buffer_size() if self.tcp is not None else 0

    # ---- output ----------------------------------------------------------------------------------

    def send_control(self, message: sess.Message) -> None:
        self._channel.send_control(sess.encode(message))
        self.flush()

    def flush(self) -> None:
        out = self._channel.data_to_send()
        if out and self.tcp is not None and not self.tcp.is_closing():
            self._last_tx = _now()
            self.tcp.write(out)

    def carry(self, stream: SessionStream, peer_received: int) -> int:
        """Carry ``stream`` from now on; returns the bytes the peer can no longer get."""
        self.stream = stream
        lost = stream.attach(self, peer_received)
        self._start_keepalive()
        return lost

    def release(self) -> SessionStream | None:
        """Give up the stream without ending the session (a newer connection resumes it)."""
        stream, self.stream = self.stream, None
        return stream

    def abort(self) -> None:
        self.closing = True
        self._stop_keepalive()
        if self.tcp is not None:
            self.tcp.abort()

    def fail(self, exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, MeshserialError) else type(exc).__name__
        _log_once.warning(source_key(self.peer.rsplit(":", 1)[0]), f"closing connection: {reason}")
        self.abort()

    # ---- keepalive -------------------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        if self._keepalive > 0 and self._keepalive_timer is None:
            self._keepalive_timer = self._loop.call_later(self._keepalive / 3, self._keepalive_tick)

    def _stop_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None

    def _keepalive_tick(self) -> None:
        self._keepalive_timer = None
        if self.closing:
            return
        now = self._loop.time()
        interval = self._keepalive / 3
        silent = now - self._last_rx
        if silent >= self._keepalive:
            log.warning("%s: nothing heard for %.1f s; dropping the connection", self.peer, silent)
            self.abort()
            return
        if now - self._last_tx >= interval or silent >= interval:
            self._channel.send_ping()
            self.flush()
        # Wake up for the next ping, or exactly when the peer's silence reaches the limit.
        wake = min(now + interval, self._last_rx + self._keepalive)
        self._keepalive_timer = self._loop.call_at(wake, self._keepalive_tick)


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
        super().__init__(identity, initiator=False, payload={"v": sess.VERSION}, keepalive=keepalive)
        self._host = host
        self._limiter = limiter
        self._handshake_timeout = handshake_timeout
        self._ip = ""
        self.source = ""
        self.started = 0.0
        self._pending = False
        self._deadline: asyncio.TimerHandle | None = None
        self.port_name: str | None = None
        self.mode: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ip = self.peer.rsplit(":", 1)[0]
        self.source = source_key(self._ip)
        self.started = self._loop.time()
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
            deadline = self._limiter.deadline(self._handshake_timeout)
            self._deadline = self._loop.call_later(deadline, self._on_deadline)

    def buffer_updated(self, nbytes: int) -> None:
        if self.telnet_first(ch.ChannelState.AWAIT_MSG1, nbytes):
            # A telnet client speaks first, starting with IAC: someone pointed a plain RFC 2217 client
            # (pyserial's rfc2217://, ser2net's, `use rfc2217://`) at the encrypted port. Tell it in a
            # line it can show; it learns nothing about us that mDNS does not already say.
            _log_once.warning(self.source, "a plain RFC 2217 client reached the encrypted port")
            self._settled()
            self.closing = True
            if self.tcp is not None:
                self.tcp.write(WRONG_DOOR)
                self.tcp.close()
            return
        super().buffer_updated(nbytes)

    @property
    def progress(self) -> int:
        """Handshake messages completed: 0 before msg1, 1 once msg2 is out, 2 once the client proved
        its key (msg3)."""
        if self.peer_id is not None:
            return 2
        return 0 if self._channel.state is ch.ChannelState.AWAIT_MSG1 else 1

    def evict(self) -> None:
        """The limiter gave our slot to a newer connection."""
        self._pending = False
        self._limiter.wasted(self.source, self._loop.time())
        _log_once.warning(
            self.source,
            "handshake slots full; closing the slowest half-open connections",
            repeats="half-open connections closed to make room",
        )
        self._settled()
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._settled()
        super().connection_lost(exc)

    def _settled(self) -> None:
        if self._pending:
            self._pending = False
            self._limiter.release(self)
            if self.peer_id is None:  # ended before the client proved its key: a wasted slot
                self._limiter.wasted(self.source, self._loop.time())
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        _log_once.warning(self.source, "handshake not completed in time", repeats="handshakes timed out")
        self.abort()

    def control(self, message: sess.Message) -> None:
        if self.stream is not None:
            raise ProtocolError(f"unexpected {type(message).__name__} during a session")
        if self.peer_id is None or self.handshake_hash is None:
            raise ProtocolError("control message before the handshake completed")
        self._settled()
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
                self.carry(stream, client_has)
            case sess.Redeem():
                try:
                    granted = self._host.redeem(self, message)
                except Refused as exc:
                    self._deny(str(exc))
                    return
                self.send_control(sess.Paired(ports=granted))
                self.close()
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} before hello")

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
        super().__init__(identity, initiator=True, payload={"v": sess.VERSION}, keepalive=keepalive)
        self._request = request
        self._stream_for = stream_for
        self.server_identified: asyncio.Future[bytes] = self._loop.create_future()
        #: Told when the server says its device went away or came back.
        self.on_device: Callable[[bool], None] | None = None
        self.answer: asyncio.Future[sess.Accept | sess.Paired] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._channel.initiate()
        self.flush()

    def identified(self, peer_id: bytes, extra: dict[str, Any]) -> None:
        if not self.server_identified.done():
            self.server_identified.set_result(peer_id)

    def proceed(self) -> None:
        """The caller trusts the server: send msg3 and our request."""
        for event in self._channel.accept_peer():
            self.handle_event(event)
        message: sess.Message
        if isinstance(self._request, sess.Hello):
            message = self._request
        else:
            # A request bound to this session (an invite proof) needs the handshake hash first.
            assert self.handshake_hash is not None
            message = self._request(self.handshake_hash)
        self.send_control(message)

    def control(self, message: sess.Message) -> None:
        match message:
            case sess.Accept():
                # Carry the stream before returning: the server's first bytes may follow in this read.
                if self._stream_for is not None:
                    self._stream_for(self, message)
                if not self.answer.done():
                    self.answer.set_result(message)
            case sess.Paired():
                if not self.answer.done():
                    self.answer.set_result(message)
            case sess.Deny(reason=reason):
                _set_exception(self.answer, Refused(reason))
            case sess.DeviceState(present=present):
                if self.on_device is not None:
                    self.on_device(present)
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} from the server")

    def buffer_updated(self, nbytes: int) -> None:
        if self.telnet_first(ch.ChannelState.AWAIT_MSG2, nbytes):
            # A telnet server speaks first, and its first byte is IAC: a plain RFC 2217 server.
            self.fail(ConnectError(f"{self.peer} is a plain RFC 2217 server: use rfc2217://{self.peer}"))
            return
        super().buffer_updated(nbytes)

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
