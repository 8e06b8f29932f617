"""One secure connection carrying a session, sans-IO: handshake, session control, keepalive.

Why: the secure channel (:mod:`~meshserial.proto.channel`) moves records; a meshserial connection
also speaks the session control vocabulary (:mod:`~meshserial.proto.session`), carries one session's
:class:`~meshserial.proto.stream.Stream` (counting what arrives, applying acknowledgements, sending
them when due) and watches the peer's liveness. All of that is here, driven by bytes and ``now``; the
asyncio adapter (:mod:`meshserial.net.secure`) only moves bytes, arms :meth:`Connection.next_timer`
and acts on the events.

Theory of operation
-------------------
The client (initiator) sends Noise message 1; on message 2 it learns the server's identity
(:class:`Identified`), decides whether to trust it, calls :meth:`Connection.accept_peer` (message 3)
and sends one request (``hello`` or ``redeem``). The server learns the client's identity with message
3 (:class:`Identified`) and gets the request (:class:`Request`), before which it has a deadline
(``handshake_deadline``, :class:`HandshakeTimedOut`). The answer (``accept``, ``deny``, ``paired``)
reaches the client as :class:`Answer`. Once a session is accepted the connection *carries* its stream
(:meth:`Connection.carry`): DATA records are counted and returned as bytes, ``ack`` messages free the
sender's window (:class:`WindowOpened` when it was full), acknowledgements go out when due.

Keepalive, while a stream is carried: with no traffic for a third of ``keepalive`` a PING goes out;
with nothing heard for ``keepalive`` the peer is declared gone (:class:`PeerSilent`), exactly at that
deadline.

A :class:`Request` or an :class:`Answer` is the last event of a batch: the adapter acts on it (starts
the session, or refuses it) before the rest of that input is looked at (:meth:`Connection.more`).

How a connection ends decides what happens to its session (:meth:`Connection.ending`): the server's
``goaway`` → reconnect and resume; the peer's CLOSE (after a ``deny`` reason or none) → the session is
over; anything else (reset, timeout, silence) → the session waits for a reconnect.

A telnet peer (its first byte is IAC, 0xFF, which no Noise message starts with) is recognised, so
that the adapter can say which protocol the other side speaks (:class:`TelnetSpoken`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, assert_never

from meshserial.errors import MeshserialError, ProtocolError
from meshserial.proto import channel as ch
from meshserial.proto import session as sess
from meshserial.proto.stream import Stream

TELNET_IAC = 0xFF

#: Checks a peer's handshake payload against the static key it proved: ``(peer id, extra fields)``,
#: or raises :class:`~meshserial.errors.HandshakeError`.
Verifier: TypeAlias = Callable[[bytes, bytes], tuple[bytes, Mapping[str, Any]]]


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


# ---- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Identified:
    """The peer proved ``peer_id`` (its certificate binds the handshake key); trust is the caller's."""

    peer_id: bytes
    extra: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Server: the client's one request after the handshake."""

    message: sess.Hello | sess.Redeem


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """Client: the server's answer to the request."""

    message: sess.Accept | sess.Paired | sess.Deny


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """Session bytes (already counted in the carried stream)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceChanged:
    """Client: the server's device went away or came back."""

    present: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowOpened:
    """Acknowledgements brought the carried stream back under its window: the producer may resume."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    """The peer's CLOSE arrived (ours is queued): flush, then close the TCP connection."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerSilent:
    """Nothing heard for the keepalive time: the path is dead; close the TCP connection."""

    silence: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeTimedOut:
    """Server: no request by the handshake deadline."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TelnetSpoken:
    """The peer's first byte is telnet's IAC: it speaks plain RFC 2217, not this protocol."""


Event: TypeAlias = (
    Identified
    | Request
    | Answer
    | Data
    | DeviceChanged
    | WindowOpened
    | PeerClosed
    | PeerSilent
    | HandshakeTimedOut
    | TelnetSpoken
)


_ACT_FIRST = (Request, Answer)


class Ending(enum.Enum):
    """How the connection ended, for its session (see the module docstring)."""

    GONE_AWAY = "gone-away"  # the server is stopping: reconnect, resume
    ENDED = "ended"  # the peer closed on purpose: the session is over
    LOST = "lost"  # no CLOSE: wait for (or make) a reconnect


class Connection:
    """One end of one meshserial connection (see the module docstring)."""

    def __init__(
        self,
        channel: ch.SecureChannel,
        *,
        role: Role,
        verify: Verifier,
        keepalive: float,
        now: float,
        handshake_deadline: float | None = None,
    ) -> None:
        self._channel = channel
        self.role = role
        self._verify = verify
        self._keepalive = keepalive
        self._interval = keepalive / 3
        self._keepalive_at: float | None = None
        self._handshake_deadline = handshake_deadline
        self._last_rx = now
        self._last_tx = now
        self.stream: Stream | None = None
        self.peer_id: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.requested = False  # server: the request arrived
        self.peer_closed = False
        self.closing = False
        self.end_reason: str | None = None  # what the peer said when it ended the session
        self.going_away: str | None = None  # the server announced that it stops
        self._fresh = True  # nothing received yet
        self._rest: list[ch.ChannelEvent] = []  # input events held back until the adapter acted

    # ---- input --------------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Client: queue message 1."""
        self._channel.initiate()

    def receive(self, data: bytes | memoryview, now: float) -> bytes | list[Event]:
        """Bytes from the network. The data path returns the session bytes they complete as
        ``bytes``; anything else comes back as events (``Data`` among them). Raises
        :class:`~meshserial.errors.ProtocolError` (and subclasses) on any violation: the first one is
        final; the adapter closes the connection."""
        self._last_rx = now
        if self._fresh:
            self._fresh = False
            if len(data) and data[0] == TELNET_IAC and self._channel.bytes_buffered == 0:
                state = self._channel.state
                if state in (ch.ChannelState.AWAIT_MSG1, ch.ChannelState.AWAIT_MSG2):
                    return [TelnetSpoken()]
        result = self._channel.receive_fast(data)
        if type(result) is bytes:
            self._count(result, now)
            return result
        assert isinstance(result, list)
        return self._process(result, now)

    def accept_peer(self, now: float) -> list[Event]:
        """Client: the server's identity is trusted; send message 3."""
        return self._process(self._channel.accept_peer(), now)

    def _count(self, data: bytes, now: float) -> None:
        stream = self.stream
        if stream is None:
            raise ProtocolError("data before the session was accepted")
        ack = stream.count(len(data), now)
        if ack is not None:
            self._send_ack(ack)

    def more(self, now: float) -> list[Event]:
        """The events of the last input that came after a :class:`Request` or :class:`Answer`.

        Processing stops after either, so that the adapter acts on it first: records that follow in
        the same read (the server's first bytes behind its ``accept``) belong to the stream the answer
        starts. Call until it returns nothing. A connection closed meanwhile (a ``deny``) drops them.
        """
        rest, self._rest = self._rest, []
        if self.closing or not rest:
            return []
        return self._process(rest, now)

    def _process(self, events: list[ch.ChannelEvent], now: float) -> list[Event]:
        out: list[Event] = []
        for index, event in enumerate(events):
            if out and type(out[-1]) in _ACT_FIRST:
                self._rest = events[index:]
                break
            match event:
                case ch.DataReceived(data=data):
                    self._count(data, now)
                    out.append(Data(data=data))
                case ch.ControlReceived(message=message):
                    self._control(sess.decode(message), out)
                case ch.Closed():
                    self.peer_closed = True
                    self.closing = True
                    out.append(PeerClosed())
                case ch.PeerIdentified(remote_static=remote_static, payload=payload):
                    peer_id, extra = self._verify(payload, remote_static)
                    self.peer_id = peer_id
                    out.append(Identified(peer_id=peer_id, extra=extra))
                case ch.HandshakeComplete(handshake_hash=handshake_hash):
                    self.handshake_hash = handshake_hash
                case ch.PingReceived() | ch.PongReceived():
                    pass  # the channel answered the ping; arriving at all counted for the keepalive
                case _:
                    assert_never(event)
        return out

    def _control(self, message: sess.Message, out: list[Event]) -> None:
        stream = self.stream
        match message:
            case sess.Ack(offset=offset):
                if stream is None:
                    raise ProtocolError("ack outside a session")
                full = stream.window_full
                stream.acked(offset)
                if full and not stream.window_full:
                    out.append(WindowOpened())
            case sess.GoAway(reason=reason) if self.role is Role.CLIENT:
                self.going_away = reason  # CLOSE follows: reconnect later
            case sess.Deny(reason=reason) if stream is not None:
                self.end_reason = reason  # the session is being ended; CLOSE follows
            case sess.Hello() | sess.Redeem() if self.role is Role.SERVER:
                if self.requested or self.peer_id is None or self.handshake_hash is None:
                    raise ProtocolError(f"unexpected {type(message).__name__}")
                self.requested = True
                self._handshake_deadline = None
                out.append(Request(message=message))
            case sess.Accept() | sess.Paired() | sess.Deny() if self.role is Role.CLIENT:
                out.append(Answer(message=message))
            case sess.DeviceState(present=present) if self.role is Role.CLIENT:
                out.append(DeviceChanged(present=present))
            case _:
                raise ProtocolError(f"unexpected {type(message).__name__} from the {self._peer_role}")

    @property
    def _peer_role(self) -> str:
        return "server" if self.role is Role.CLIENT else "client"

    def eof(self) -> None:
        """The peer closed its side of TCP: clean only after its CLOSE (raises otherwise)."""
        if not self.peer_closed:
            self._channel.eof_received()

    # ---- timers -------------------------------------------------------------------------------------

    def set_handshake_deadline(self, at: float | None) -> None:
        """Server: the request must arrive by ``at`` (the slot table decides how long that is)."""
        self._handshake_deadline = at

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` wants to run next (``None``: not at all)."""
        # Called after every input by the adapter: no allocation on this path.
        at = self._handshake_deadline
        keepalive = self._keepalive_at
        if keepalive is not None and (at is None or keepalive < at):
            at = keepalive
        stream = self.stream
        if stream is not None:
            ack = stream.ack_at
            if ack is not None and (at is None or ack < at):
                at = ack
        return at

    def handle_timer(self, now: float) -> list[Event]:
        out: list[Event] = []
        if self.closing:
            return out
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._handshake_deadline = None
            out.append(HandshakeTimedOut())
            return out
        stream = self.stream
        if stream is not None:
            ack = stream.handle_timer(now)
            if ack is not None:
                self._send_ack(ack)
        at = self._keepalive_at
        if at is not None and now >= at:
            silent = now - self._last_rx
            if silent >= self._keepalive:
                self._keepalive_at = None
                out.append(PeerSilent(silence=silent))
                return out
            if now - self._last_tx >= self._interval or silent >= self._interval:
                self._channel.send_ping()
                self._last_tx = now
            # Next: the next ping, or exactly when the peer's silence reaches the limit.
            self._keepalive_at = min(now + self._interval, self._last_rx + self._keepalive)
        return out

    # ---- output -------------------------------------------------------------------------------------

    def send_control(self, message: sess.Message, now: float | None = None) -> None:
        self._channel.send_control(sess.encode(message))
        if now is not None:
            self._last_tx = now

    def _send_ack(self, offset: int) -> None:
        if not self.closing and self._channel.state is ch.ChannelState.ESTABLISHED:
            self._channel.send_control(sess.encode(sess.Ack(offset=offset)))

    def seal(self, data: bytes, now: float) -> bytes | bytearray | None:
        """Session bytes for the wire, to be written at once (``None``: the connection is closing)."""
        if self.closing:
            return None
        try:
            wire = self._channel.seal_data(data)
        except MeshserialError:
            # Records decrypted in the same read as the peer's CLOSE are still delivered; replies to
            # them have nowhere to go once the channel is closed (or has failed).
            return None
        self._last_tx = now
        return wire

    def carry(self, stream: Stream, peer_received: int, now: float) -> int:
        """Carry ``stream`` from now on and queue what the peer lacks; returns the bytes the peer can
        no longer get (0 unless the replay buffer overflowed)."""
        self.stream = stream
        data, lost = stream.resend(peer_received)
        if data:
            self._channel.send_data(data)
            self._last_tx = now
        if self._keepalive > 0 and self._keepalive_at is None:
            self._keepalive_at = now + self._interval
        return lost

    def release(self) -> Stream | None:
        """Give up the stream without ending the session (a newer connection resumes it)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.stop_acking()
        self._keepalive_at = None
        return stream

    def close(self, reason: str | None = None) -> None:
        """End the connection cleanly: the ``deny`` reason first (if any), then CLOSE."""
        if self.closing:
            return
        self.closing = True
        self._keepalive_at = None
        self._handshake_deadline = None
        # Only an established channel can say anything (during the handshake, or after a failure, the
        # TCP connection is simply closed).
        if self._channel.established:
            if reason:
                self._channel.send_control(sess.encode(sess.Deny(reason=reason)))
            self._channel.close()

    def go_away(self, reason: str) -> None:
        """Server: tell the client we are stopping (it will reconnect), then close."""
        if self.closing:
            return
        if self._channel.established:
            self._channel.send_control(sess.encode(sess.GoAway(reason=reason)))
        self.close()

    def abort(self) -> None:
        """The adapter drops the TCP connection: nothing more is sent or timed."""
        self.closing = True
        self._keepalive_at = None
        self._handshake_deadline = None

    def data_to_send(self) -> bytes:
        return self._channel.data_to_send()

    # ---- state --------------------------------------------------------------------------------------

    @property
    def progress(self) -> int:
        """Handshake messages completed: 0 before message 1, 1 once message 2 is out, 2 once the
        client proved its key (message 3)."""
        if self.peer_id is not None:
            return 2
        return 0 if self._channel.state is ch.ChannelState.AWAIT_MSG1 else 1

    def ending(self) -> Ending:
        """What the end of the TCP connection means for the carried session."""
        if self.going_away is not None:
            return Ending.GONE_AWAY
        if self.peer_closed:
            return Ending.ENDED
        return Ending.LOST
