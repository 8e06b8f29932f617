"""The secure channel on a TCP connection, and the transport it gives to the RFC 2217 layer.

``SecureConnection`` is the asyncio protocol of the TCP connection. It feeds the sans-IO
:class:`~meshserial.proto.channel.SecureChannel`, runs the session hello, and then hands an
:class:`InnerTransport` to an ordinary RFC 2217 protocol (:class:`Rfc2217ServerSession` on the server,
:class:`RemotePort` on the client): the RFC 2217 layer never sees ciphertext, and the channel never sees
serial settings.

Server: a client is authorized only after it has proven its key (Noise message 3) and named the port
in its hello; before that, nothing it sends reaches a port and it learns nothing about the ports. The
first failure of any kind closes the connection. Unauthenticated handshakes are bounded per source
address and in total, and each has a deadline, so floods and slow clients cannot starve others.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from meshserial.errors import (
    ConnectionLost,
    HandshakeError,
    MeshserialError,
    ProtocolError,
    Refused,
)
from meshserial.keys import Identity, verify_handshake_payload
from meshserial.net.logonce import LogOnce
from meshserial.net.tcp import tune_socket
from meshserial.proto import channel as ch
from meshserial.proto import session as sess

log = logging.getLogger(__name__)
_log_once = LogOnce(log)

HANDSHAKE_TIMEOUT = 10.0
MAX_PENDING_PER_IP = 16
MAX_PENDING_TOTAL = 256


class InnerTransport(asyncio.Transport):
    """What the RFC 2217 layer writes to: plaintext in, records out."""

    def __init__(self, outer: SecureConnection) -> None:
        super().__init__()
        self._outer = outer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._outer.send_plain(bytes(data))

    def close(self) -> None:
        self._outer.close()

    def abort(self) -> None:
        self._outer.abort()

    def is_closing(self) -> bool:
        return self._outer.closing

    def pause_reading(self) -> None:
        self._outer.tcp_pause_reading()

    def resume_reading(self) -> None:
        self._outer.tcp_resume_reading()

    def is_reading(self) -> bool:
        return self._outer.reading

    def get_write_buffer_size(self) -> int:
        tcp = self._outer.tcp
        return tcp.get_write_buffer_size() if tcp is not None else 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peer_id":
            return self._outer.peer_id
        tcp = self._outer.tcp
        return tcp.get_extra_info(name, default) if tcp is not None else default


class SecureConnection(asyncio.Protocol):
    """Common plumbing of both ends."""

    def __init__(self, identity: Identity, *, initiator: bool, payload: dict[str, Any]) -> None:
        self._channel = ch.SecureChannel(
            initiator=initiator,
            static_private=identity.noise_private,
            payload=identity.handshake_payload(payload),
        )
        self.tcp: asyncio.Transport | None = None
        self.peer = "peer"
        self.peer_id: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.inner: asyncio.Protocol | None = None
        self.closing = False
        self.reading = True
        self._inner_lost = False
        self._peer_closed = False

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.tcp = transport
        tune_socket(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "peer"

    def data_received(self, data: bytes) -> None:
        if self.closing and self._peer_closed:
            return
        try:
            events = self._channel.receive_data(data)
            for event in events:
                self.handle_event(event)
        except MeshserialError as exc:
            self.fail(exc)
            return
        self.flush()

    def eof_received(self) -> bool | None:
        if not self._peer_closed:
            try:
                self._channel.eof_received()
            except MeshserialError as exc:
                if self.inner is not None:
                    log.info("%s: %s", self.peer, exc)
                self._lose_inner(exc)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if exc is None and not self._peer_closed:
            self._lose_inner(ConnectionLost("connection closed without CLOSE"))
        else:
            self._lose_inner(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # ---- events ----------------------------------------------------------------------------------

    def handle_event(self, event: ch.ChannelEvent) -> None:
        match event:
            case ch.DataReceived(data=data):
                if self.inner is not None:
                    self.inner.data_received(data)
                else:
                    raise ProtocolError("data before the session was accepted")
            case ch.ControlReceived(message=message):
                self.control(sess.decode(message))
            case ch.Closed():
                self._peer_closed = True
                self.closing = True
                self.flush()
                if self.tcp is not None:
                    self.tcp.close()
                self._lose_inner(None)
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
        """A session control message arrived."""

    # ---- output ----------------------------------------------------------------------------------

    def send_control(self, message: sess.Message) -> None:
        self._channel.send_control(sess.encode(message))
        self.flush()

    def send_plain(self, data: bytes) -> None:
        if self.closing:
            return
        self._channel.send_data(data)
        self.flush()

    def flush(self) -> None:
        out = self._channel.data_to_send()
        if out and self.tcp is not None and not self.tcp.is_closing():
            self.tcp.write(out)

    def attach(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        inner.connection_made(InnerTransport(self))

    def close(self) -> None:
        """Send CLOSE and end the connection."""
        if self.closing:
            return
        self.closing = True
        try:
            if self._channel.established:
                self._channel.close()
                self.flush()
        except MeshserialError:
            pass
        if self.tcp is not None:
            self.tcp.close()

    def abort(self) -> None:
        self.closing = True
        if self.tcp is not None:
            self.tcp.abort()

    def fail(self, exc: BaseException) -> None:
        reason = type(exc).__name__ if not isinstance(exc, MeshserialError) else str(exc)
        _log_once.warning(self.peer.rsplit(":", 1)[0], f"closing connection: {reason}")
        self.abort()
        self._lose_inner(exc)

    def tcp_pause_reading(self) -> None:
        if self.tcp is not None and self.reading and not self.closing:
            self.reading = False
            self.tcp.pause_reading()

    def tcp_resume_reading(self) -> None:
        if self.tcp is not None and not self.reading and not self.closing:
            self.reading = True
            self.tcp.resume_reading()

    def _lose_inner(self, exc: BaseException | None) -> None:
        if self.inner is not None and not self._inner_lost:
            self._inner_lost = True
            self.inner.connection_lost(exc if isinstance(exc, Exception) or exc is None else None)


# ---- server --------------------------------------------------------------------------------------


class Authorizer(Protocol):
    """The server's access policy (backed by ``authorized_clients`` and the invite store)."""

    def rights(self, client_id: bytes, port: str) -> str | None:
        """``"rw"``, ``"ro"`` or ``None`` (no access)."""

    def label(self, client_id: bytes) -> str:
        """A short human name for logs and for "in use by …"."""

    def redeem(self, invite: str, proof: str, handshake_hash: bytes, client_id: bytes) -> str:
        """Check an invite proof and authorize the client; return the rights granted, or raise Refused."""


class HandshakeLimiter:
    """Counts unauthenticated handshakes in progress, per source address and in total."""

    def __init__(self, *, per_ip: int = MAX_PENDING_PER_IP, total: int = MAX_PENDING_TOTAL) -> None:
        self.per_ip = per_ip
        self.total = total
        self._counts: Counter[str] = Counter()

    def acquire(self, ip: str) -> bool:
        if self._counts[ip] >= self.per_ip or sum(self._counts.values()) >= self.total:
            return False
        self._counts[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self._counts[ip] -= 1
        if self._counts[ip] <= 0:
            del self._counts[ip]


class ServerConnection(SecureConnection):
    """The server end: handshake, authorization, then an RFC 2217 session on the chosen port."""

    def __init__(
        self,
        identity: Identity,
        *,
        authorizer: Authorizer,
        open_session: Callable[[ServerConnection, sess.Hello, str], asyncio.Protocol],
        limiter: HandshakeLimiter,
        server_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(identity, initiator=False, payload=server_info or {"v": sess.VERSION})
        self._authorizer = authorizer
        self._open_session = open_session
        self._limiter = limiter
        self._ip = ""
        self._pending = False
        self._deadline: asyncio.TimerHandle | None = None
        self.port_name: str | None = None
        self.mode: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ip = self.peer.rsplit(":", 1)[0]
        if not self._limiter.acquire(self._ip):
            _log_once.warning(self._ip, "too many handshakes in progress; refusing connections")
            self.abort()
            return
        self._pending = True
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settled()
        super().connection_lost(exc)

    def _settled(self) -> None:
        if self._pending:
            self._pending = False
            self._limiter.release(self._ip)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _handshake_timeout(self) -> None:
        self._deadline = None
        _log_once.warning(self._ip, "handshake not completed in time")
        self.abort()

    def identified(self, peer_id: bytes, extra: dict[str, Any]) -> None:
        log.debug("%s: client key proven", self.peer)

    def control(self, message: sess.Message) -> None:
        if self.inner is not None:
            if isinstance(message, sess.Ack):
                return
            raise ProtocolError(f"unexpected {type(message).__name__} during a session")
        assert self.peer_id is not None and self.handshake_hash is not None
        client = self.peer_id
        match message:
            case sess.Hello():
                self._settled()
                rights = self._authorizer.rights(client, message.port)
                if rights is None:
                    # Same answer whether the port exists or not: the client learns nothing.
                    self._deny(f"not authorized for port {message.port!r}")
                    return
                if message.mode == "rw" and rights != "rw":
                    self._deny(f"read-only access to {message.port}: connect with --read-only")
                    return
                try:
                    inner = self._open_session(self, message, self._authorizer.label(client))
                except Refused as exc:
                    self._deny(str(exc))
                    return
                self.port_name = message.port
                self.mode = message.mode
                self.send_control(
                    sess.Accept(port=message.port, mode=message.mode, session=secrets.token_hex(16))
                )
                self.attach(inner)
            case sess.Redeem():
                self._settled()
                try:
                    granted = self._authorizer.redeem(
                        message.invite, message.proof, self.handshake_hash, client
                    )
                except Refused as exc:
                    self._deny(str(exc))
                    return
                self.send_control(sess.Paired(ports=granted))
                self.close()
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} before hello")

    def _deny(self, reason: str) -> None:
        log.info("%s (%s): denied: %s", self.peer, self._authorizer.label(self.peer_id or b""), reason)
        self.send_control(sess.Deny(reason=reason))
        self.close()


# ---- client --------------------------------------------------------------------------------------


TrustCheck = Callable[[bytes], Awaitable[None]]


class ClientConnection(SecureConnection):
    """The client end: verify the server, then hello (or redeem) and wait for the answer."""

    def __init__(
        self,
        identity: Identity,
        *,
        request: sess.Hello | Callable[[bytes], sess.Message],
        inner_factory: Callable[[], asyncio.Protocol] | None = None,
    ) -> None:
        super().__init__(identity, initiator=True, payload={"v": sess.VERSION})
        self._request = request
        self._inner_factory = inner_factory
        loop = asyncio.get_running_loop()
        self.server_identified: asyncio.Future[bytes] = loop.create_future()
        self.answer: asyncio.Future[sess.Accept | sess.Paired] = loop.create_future()

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
        self._channel.send_control(sess.encode(message))
        self.flush()

    def control(self, message: sess.Message) -> None:
        match message:
            case sess.Accept():
                # Attach before returning: the server's first RFC 2217 bytes may follow in this very read.
                if self._inner_factory is not None and self.inner is None:
                    self.attach(self._inner_factory())
                if not self.answer.done():
                    self.answer.set_result(message)
            case sess.Paired():
                if not self.answer.done():
                    self.answer.set_result(message)
            case sess.Deny(reason=reason):
                _set_exception(self.answer, Refused(reason))
            case sess.Ack():
                pass
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} from the server")

    def fail(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, MeshserialError) else HandshakeError(str(exc))
        for fut in (self.server_identified, self.answer):
            _set_exception(fut, error)
        super().fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ConnectionLost("the server closed the connection")
        for fut in (self.server_identified, self.answer):
            _set_exception(fut, lost)
        super().connection_lost(exc)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved here: whoever awaits still gets it, nobody gets a warning
