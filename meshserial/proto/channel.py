"""The meshserial secure channel: Noise XX over one TCP connection, sans-IO.

Theory of operation
-------------------
One :class:`SecureChannel` is one end of one TCP connection. The client is the Noise initiator, the
server the responder. The wire format is specified in ``docs/protocol.md`` (part 2); in short,
every message is ``uint16_be length ‖ Noise message`` and the handshake is
``Noise_XX_25519_ChaChaPoly_BLAKE2b`` with the prologue :data:`PROLOGUE`.

States (:class:`ChannelState`) and who drives each transition::

    initiator: IDLE --initiate()--> AWAIT_MSG2 --msg2 read--> AWAIT_ACCEPT --accept_peer()--> ESTABLISHED
    responder: AWAIT_MSG1 --msg1 read, msg2 queued--> AWAIT_MSG3 --msg3 read--> ESTABLISHED
    ESTABLISHED --CLOSE received (our CLOSE answered automatically)--> CLOSED
    any state --bad input / eof_received() without CLOSE--> FAILED (terminal: every later call raises)

The initiator stops after msg2 and reports :class:`PeerIdentified` so that the caller can check the
server's identity (carried in the opaque payload) *before* revealing its own in msg3; only
:meth:`SecureChannel.accept_peer` sends msg3. The responder reports :class:`PeerIdentified` and
:class:`HandshakeComplete` together after msg3; records the client sent right behind msg3 are decrypted
in the same call, so a server must act on ``PeerIdentified`` (authorize) before acting on later events.

After the handshake each direction is one Noise CipherState with an implicit counter nonce; TCP
delivers in order, so nonces are never sent and a record that does not decrypt under the next counter
— tampered, replayed, reordered, dropped — is fatal (Noise §11.4's explicit nonces are for lossy
transports only). Every transport plaintext is ``type (1 byte) ‖ body``.

Deliberately unsupported: resuming after any error, half-close (CLOSE is a full close and is answered
with CLOSE), time-based rekeying (no clocks here; an adapter may call :meth:`SecureChannel.rekey` on a
timer), IK/0-RTT, and records above :data:`MAX_RECORD_BODY` bytes.

Memory is bounded for any input: the receive buffer holds at most one incomplete frame, and a frame's
length is checked against the limit of the current state as soon as its 2-byte header is known.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TypeAlias

from meshserial.errors import ConnectionLost, HandshakeError, MeshserialError, ProtocolError, UsageError
from meshserial.proto.noise import DHLEN, TAGLEN, CipherState, HandshakeState

__all__ = [
    "DEFAULT_REKEY_AFTER_BYTES",
    "DEFAULT_REKEY_AFTER_RECORDS",
    "MAX_MSG2_PAYLOAD",
    "MAX_MSG3_PAYLOAD",
    "MAX_RECORD_BODY",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "ChannelEvent",
    "ChannelState",
    "Closed",
    "ControlReceived",
    "DataReceived",
    "HandshakeComplete",
    "PeerIdentified",
    "PingReceived",
    "PongReceived",
    "RecordType",
    "SecureChannel",
]

PROTOCOL_NAME = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
# Noise §6: everything agreed outside Noise goes into the prologue, so a downgrade breaks the handshake.
PROLOGUE = b"meshserial/1 " + PROTOCOL_NAME.encode("ascii")

HEADER_LEN = 2
MSG1_LEN = DHLEN  # "e" and an empty cleartext payload.
MAX_HANDSHAKE_MESSAGE = 1024
MIN_MSG2_LEN = DHLEN + (DHLEN + TAGLEN) + TAGLEN  # e, encrypted s, encrypted payload
MIN_MSG3_LEN = (DHLEN + TAGLEN) + TAGLEN  # encrypted s, encrypted payload
MAX_MSG2_PAYLOAD = MAX_HANDSHAKE_MESSAGE - MIN_MSG2_LEN
MAX_MSG3_PAYLOAD = MAX_HANDSHAKE_MESSAGE - MIN_MSG3_LEN

MAX_RECORD_BODY = 16 * 1024
MIN_RECORD_FRAME = 1 + TAGLEN
MAX_RECORD_FRAME = 1 + MAX_RECORD_BODY + TAGLEN

DEFAULT_REKEY_AFTER_RECORDS = 2**20
DEFAULT_REKEY_AFTER_BYTES = 2**30

_LENGTH = struct.Struct(">H").pack


class RecordType(enum.IntEnum):
    """The first plaintext byte of every transport record."""

    DATA = 0
    CTRL = 1
    REKEY = 2
    CLOSE = 3
    PING = 4
    PONG = 5


_DATA_KIND = int(RecordType.DATA)  # a plain int: compared on every record


class ChannelState(enum.Enum):
    """Where a :class:`SecureChannel` is; see the module docstring for the transitions."""

    IDLE = "idle"
    AWAIT_MSG1 = "await-msg1"
    AWAIT_MSG2 = "await-msg2"
    AWAIT_ACCEPT = "await-accept"
    AWAIT_MSG3 = "await-msg3"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerIdentified:
    """The peer proved possession of ``remote_static`` and sent ``payload`` (its identity claim)."""

    remote_static: bytes
    payload: bytes

    def __repr__(self) -> str:
        key = self.remote_static.hex()
        return f"PeerIdentified(remote_static={key}, payload=<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete:
    """Transport keys are in place; ``handshake_hash`` is the channel binding value (Noise §11.2)."""

    handshake_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    """Application bytes; consecutive DATA records of one :meth:`SecureChannel.receive_data` are joined."""

    data: bytes

    def __repr__(self) -> str:
        return f"DataReceived(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlReceived:
    """One CTRL record (JSON by convention; the channel does not parse it)."""

    message: bytes

    def __repr__(self) -> str:
        return f"ControlReceived(<{len(self.message)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReceived:
    """The peer pinged; the PONG has already been queued."""

    payload: bytes

    def __repr__(self) -> str:
        return f"PingReceived(<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived:
    """The peer answered a PING."""

    payload: bytes

    def __repr__(self) -> str:
        return f"PongReceived(<{len(self.payload)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed:
    """The peer's CLOSE arrived; ours has been sent (or queued). The connection may now be closed."""


ChannelEvent: TypeAlias = (
    PeerIdentified | HandshakeComplete | DataReceived | ControlReceived | PingReceived | PongReceived | Closed
)


# --------------------------------------------------------------------------------------------- the channel


class SecureChannel:
    """One end of a meshserial secure channel (see the module docstring).

    ``static_private`` is our 32-byte X25519 Noise static key; ``payload`` is the opaque identity
    payload carried in our handshake message (msg2 for the responder, msg3 for the initiator);
    ``ephemeral`` injects the ephemeral private key for known-answer tests only.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        payload: bytes,
        ephemeral: bytes | None = None,
        rekey_after_records: int = DEFAULT_REKEY_AFTER_RECORDS,
        rekey_after_bytes: int = DEFAULT_REKEY_AFTER_BYTES,
    ) -> None:
        if len(static_private) != DHLEN:
            raise UsageError(f"the Noise static private key is {DHLEN} bytes")
        limit = MAX_MSG3_PAYLOAD if initiator else MAX_MSG2_PAYLOAD
        if len(payload) > limit:
            raise UsageError(f"the handshake payload is {len(payload)} bytes; at most {limit} fit")
        if rekey_after_records < 1 or rekey_after_bytes < 1:
            raise UsageError("rekey thresholds must be positive")
        self._initiator = initiator
        self._payload = bytes(payload)
        self._handshake: HandshakeState | None = HandshakeState(
            PROTOCOL_NAME,
            initiator=initiator,
            prologue=PROLOGUE,
            static=static_private,
            ephemeral=ephemeral,
        )
        self._state = ChannelState.IDLE if initiator else ChannelState.AWAIT_MSG1
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._handshake_hash: bytes | None = None
        self._remote_static: bytes | None = None
        self._rbuf = bytearray()
        self._out: list[bytes] = []
        # The first failure, kept without its traceback: the traceback's frames hold whoever fed us
        # the bytes, and a failed connection must be freed at once, not at the next garbage collection.
        self._error: tuple[type[MeshserialError], str] | None = None
        self._close_sent = False
        self._rekey_after_records = rekey_after_records
        self._rekey_after_bytes = rekey_after_bytes
        self._records_since_rekey = 0
        self._bytes_since_rekey = 0

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        return f"SecureChannel({role}, state={self._state.value})"

    # ----------------------------------------------------------------------------------------- properties

    @property
    def state(self) -> ChannelState:
        """The current :class:`ChannelState`."""
        return self._state

    @property
    def established(self) -> bool:
        """True between handshake completion and the end (CLOSE exchanged, or failure)."""
        return self._state is ChannelState.ESTABLISHED

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash: the channel binding for app-level proofs (Noise §11.2)."""
        if self._handshake_hash is None:
            raise UsageError("the handshake hash is defined only once the handshake is complete")
        return self._handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        """The peer's Noise static public key, once the peer has proven it."""
        return self._remote_static

    @property
    def bytes_buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame (never more than one frame + header)."""
        return len(self._rbuf)

    # ----------------------------------------------------------------------------------------- failure

    def _check_usable(self) -> None:
        error = self._error
        if error is not None:
            kind, text = error
            raise kind(f"the channel already failed: {text}")

    def _fail(self, error: MeshserialError) -> None:
        self._error = (type(error), str(error))
        self._state = ChannelState.FAILED
        # Nothing more may be sent, and key material should not outlive the connection.
        self._out.clear()
        self._rbuf.clear()
        self._send = self._recv = None
        self._handshake = None

    # ----------------------------------------------------------------------------------------- handshake

    def initiate(self) -> None:
        """Initiator: queue msg1 (our ephemeral key, empty payload)."""
        self._check_usable()
        if not self._initiator or self._state is not ChannelState.IDLE or self._handshake is None:
            raise UsageError("initiate() is for an initiator that has not started yet")
        self._write_handshake(b"")
        self._state = ChannelState.AWAIT_MSG2

    def accept_peer(self) -> list[ChannelEvent]:
        """Confirm the peer's identity after :class:`PeerIdentified`.

        Initiator: sends msg3 with our payload, completes the handshake and returns
        ``[HandshakeComplete]``. Responder: the handshake is already complete; returns ``[]``.
        """
        self._check_usable()
        if not self._initiator:
            if self._remote_static is None:
                raise UsageError("accept_peer() before the peer was identified")
            return []
        if self._state is not ChannelState.AWAIT_ACCEPT or self._handshake is None:
            raise UsageError("accept_peer() is valid once, after PeerIdentified")
        self._write_handshake(self._payload)
        return [self._finish_handshake(self._handshake)]

    def _write_handshake(self, payload: bytes) -> None:
        assert self._handshake is not None
        try:
            message = self._handshake.write_message(payload)
        except HandshakeError as error:  # a low-order peer ephemeral surfaces while we write
            self._fail(error)
            raise
        self._out.append(_LENGTH(len(message)))
        self._out.append(message)

    def _finish_handshake(self, handshake: HandshakeState) -> HandshakeComplete:
        self._send, self._recv = handshake.split()
        self._handshake_hash = handshake.handshake_hash
        self._handshake = None  # drops the ephemeral private key
        self._state = ChannelState.ESTABLISHED
        return HandshakeComplete(handshake_hash=self._handshake_hash)

    # ----------------------------------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ChannelEvent]:
        """Feed bytes from the network; returns the events they complete.

        Raises :class:`HandshakeError` / :class:`ProtocolError` on any violation; the first one is
        terminal.
        """
        self._check_usable()
        events: list[ChannelEvent] = []
        if not data:
            return events
        try:
            self._receive(memoryview(data).cast("B"), events)
        except ProtocolError as error:
            self._fail(error)
            raise
        return events

    def receive_fast(self, data: bytes | memoryview) -> bytes | list[ChannelEvent]:
        """:meth:`receive_data` for the data path: when all that ``data`` completes is application
        bytes, they are returned as bytes; otherwise the events, exactly as :meth:`receive_data` would
        return them."""
        length = len(data) - HEADER_LEN
        if (
            self._rbuf
            or self._state is not ChannelState.ESTABLISHED
            or not MIN_RECORD_FRAME <= length <= MAX_RECORD_FRAME
            or (data[0] << 8) | data[1] != length
        ):
            completed = self.receive_data(data)
            if len(completed) == 1 and type(only := completed[0]) is DataReceived:
                return only.data  # several DATA records (and perhaps a partial one): no event needed
            return completed
        recv = self._recv
        assert recv is not None
        try:
            kind, body = recv.decrypt_split(data[HEADER_LEN:])
            if kind == _DATA_KIND and body:
                return body
            # Not a DATA record with a body: nothing for ``pending`` to collect (an empty DATA
            # record is dropped), so the events are complete.
            events: list[ChannelEvent] = []
            self._handle_record(kind, body, events, [])
        except ProtocolError as error:
            self._fail(error)
            raise
        return events

    def eof_received(self) -> None:
        """The peer closed TCP. Clean only after its CLOSE; otherwise the stream was truncated."""
        self._check_usable()
        if self._state is ChannelState.CLOSED:
            return
        error = ConnectionLost("truncated: the connection ended without a CLOSE record")
        self._fail(error)
        raise error

    def _frame_limits(self) -> tuple[int, int]:
        """(min, max) Noise message length acceptable in the current state."""
        match self._state:
            case ChannelState.ESTABLISHED:
                return MIN_RECORD_FRAME, MAX_RECORD_FRAME
            case ChannelState.AWAIT_MSG1:
                return MSG1_LEN, MSG1_LEN
            case ChannelState.AWAIT_MSG2:
                return MIN_MSG2_LEN, MAX_HANDSHAKE_MESSAGE
            case ChannelState.AWAIT_MSG3:
                return MIN_MSG3_LEN, MAX_HANDSHAKE_MESSAGE
            case ChannelState.IDLE | ChannelState.AWAIT_ACCEPT:
                # XX: the responder cannot speak before msg1 nor between msg2 and msg3.
                raise HandshakeError("the peer sent data out of turn during the handshake")
            case ChannelState.CLOSED:
                raise ProtocolError("the peer sent data after its CLOSE record")
            case ChannelState.FAILED:  # pragma: no cover - _check_usable() runs first
                raise ProtocolError("the channel failed")

    def _check_length(self, length: int) -> None:
        low, high = self._frame_limits()
        if not low <= length <= high:
            error = HandshakeError if self._state is not ChannelState.ESTABLISHED else ProtocolError
            raise error(f"frame of {length} bytes outside [{low}, {high}] in state {self._state.value}")

    def _receive(self, view: memoryview, events: list[ChannelEvent]) -> None:
        buf = self._rbuf
        end = len(view)
        pos = 0
        pending: list[bytes] = []  # consecutive DATA bodies, joined into one event
        if self._state is ChannelState.ESTABLISHED and not buf:
            pos = self._receive_records(view, events, pending)
        while pos < end:
            if buf:
                # Complete the frame already started by an earlier call; copy only what it needs.
                if len(buf) < HEADER_LEN:
                    # One header byte arrived last time; pos < end guarantees the second.
                    buf.append(view[pos])
                    pos += 1
                    self._check_length(_peek(buf))
                total = HEADER_LEN + _peek(buf)
                take = min(total - len(buf), end - pos)
                buf += view[pos : pos + take]
                pos += take
                if len(buf) < total:
                    break
                frame: bytes | memoryview = bytes(buf[HEADER_LEN:])
                buf.clear()
            else:
                # Whole frames straight out of the caller's buffer. In states where the peer may not
                # speak at all, even one byte is an error, so ask before reading.
                self._frame_limits()
                if end - pos < HEADER_LEN:
                    buf += view[pos:end]
                    break
                length = (view[pos] << 8) | view[pos + 1]
                self._check_length(length)
                if end - pos - HEADER_LEN < length:
                    buf += view[pos:end]
                    break
                # A record is decrypted straight out of the caller's buffer (the decryption is the
                # copy); handshake messages are kept as bytes.
                frame = view[pos + HEADER_LEN : pos + HEADER_LEN + length]
                pos += HEADER_LEN + length
            if self._state is ChannelState.ESTABLISHED:
                recv = self._recv
                assert recv is not None
                self._handle_record(*recv.decrypt_split(frame), events, pending)
            else:
                self._handle_handshake(bytes(frame), events)
        if pending:
            _flush_data(pending, events)

    def _receive_records(self, view: memoryview, events: list[ChannelEvent], pending: list[bytes]) -> int:
        """The data path: whole records at the start of ``view``, decrypted in place. Returns where it
        stopped (an incomplete frame, or a record that changed the state) for the general loop."""
        recv = self._recv
        assert recv is not None
        decrypt = recv.decrypt_split
        end = len(view)
        pos = 0
        while end - pos >= HEADER_LEN:
            length = (view[pos] << 8) | view[pos + 1]
            if not MIN_RECORD_FRAME <= length <= MAX_RECORD_FRAME:
                self._check_length(length)  # raises with the full message
            start = pos + HEADER_LEN
            if end - start < length:
                break
            kind, body = decrypt(view[start : start + length])
            pos = start + length
            if kind == _DATA_KIND:
                if body:
                    pending.append(body)
                continue
            self._handle_record(kind, body, events, pending)
            if self._state is not ChannelState.ESTABLISHED:
                break
        return pos

    def _handle_handshake(self, message: bytes, events: list[ChannelEvent]) -> None:
        handshake = self._handshake
        assert handshake is not None
        payload = handshake.read_message(message)
        match self._state:
            case ChannelState.AWAIT_MSG1:
                # msg1 is exactly one ephemeral key, so its payload is empty by construction.
                self._write_handshake(self._payload)
                self._state = ChannelState.AWAIT_MSG3
            case ChannelState.AWAIT_MSG2:
                self._remote_static = handshake.remote_static
                assert self._remote_static is not None
                self._state = ChannelState.AWAIT_ACCEPT
                events.append(PeerIdentified(remote_static=self._remote_static, payload=payload))
            case _:
                self._remote_static = handshake.remote_static
                assert self._remote_static is not None
                events.append(PeerIdentified(remote_static=self._remote_static, payload=payload))
                events.append(self._finish_handshake(handshake))

    def _handle_record(
        self, record_type: int, body: bytes, events: list[ChannelEvent], pending: list[bytes]
    ) -> None:
        recv = self._recv
        assert recv is not None
        if record_type == _DATA_KIND:
            if body:
                pending.append(body)
            return
        if pending:
            _flush_data(pending, events)
        match record_type:
            case RecordType.CTRL:
                events.append(ControlReceived(message=body))
            case RecordType.REKEY:
                if body:
                    raise ProtocolError("REKEY record with a body")
                # The sender switched keys right after this record (Noise §11.3 leaves the
                # when to the application; both ends must do it at the same record).
                recv.rekey()
            case RecordType.CLOSE:
                if body:
                    raise ProtocolError("CLOSE record with a body")
                if not self._close_sent:
                    self._send_record(RecordType.CLOSE)
                    self._close_sent = True
                self._state = ChannelState.CLOSED
                self._send = self._recv = None
                events.append(Closed())
            case RecordType.PING:
                events.append(PingReceived(payload=body))
                if not self._close_sent:
                    self._send_record(RecordType.PONG, body)
            case RecordType.PONG:
                events.append(PongReceived(payload=body))
            case _:
                raise ProtocolError(f"unknown record type {record_type}")

    # ----------------------------------------------------------------------------------------- output

    def _require_sendable(self) -> None:
        self._check_usable()
        if self._state is not ChannelState.ESTABLISHED:
            raise UsageError(f"cannot send in state {self._state.value}; the handshake is not complete")
        if self._close_sent:
            raise UsageError("cannot send after close()")

    def _send_record(self, kind: int, body: bytes | bytearray | memoryview = b"") -> None:
        # The automatic policy rekeys *before* a record once a key has done its share, so no REKEY can
        # ever trail our CLOSE.
        if (
            self._records_since_rekey >= self._rekey_after_records
            or self._bytes_since_rekey >= self._rekey_after_bytes
        ):
            self._rekey_now()
        send = self._send
        assert send is not None
        self._out.append(send.encrypt_framed(kind, body))
        self._records_since_rekey += 1
        self._bytes_since_rekey += len(body) + 1

    def _rekey_now(self) -> None:
        send = self._send
        assert send is not None
        # The REKEY record travels under the old key, so the receiver learns exactly which record is
        # the last one under it (Noise §4.2 Rekey(); the nonce keeps counting).
        self._out.append(send.encrypt_framed(RecordType.REKEY, b""))
        send.rekey()
        self._records_since_rekey = 0
        self._bytes_since_rekey = 0

    def send_data(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application bytes as DATA records of at most :data:`MAX_RECORD_BODY` bytes each."""
        self._require_sendable()
        if 0 < len(data) <= MAX_RECORD_BODY:
            self._send_record(_DATA_KIND, data)  # the usual case: one record
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_RECORD_BODY):
            self._send_record(_DATA_KIND, view[start : start + MAX_RECORD_BODY])

    def seal_data(self, data: bytes) -> bytes | bytearray:
        """The data path: ``send_data(data)`` then ``data_to_send()`` in one call.

        When nothing else is queued and no rekey falls due within the write, its DATA records are built
        and returned directly (a large write as one buffer of records); any other situation takes the
        general way.
        """
        size = len(data)
        count = -(-size // MAX_RECORD_BODY)
        if (
            self._out
            or not size
            or self._state is not ChannelState.ESTABLISHED
            or self._close_sent
            or self._records_since_rekey + count > self._rekey_after_records
            or self._bytes_since_rekey + size + count > self._rekey_after_bytes
        ):
            self.send_data(data)
            return self.data_to_send()
        send = self._send
        assert send is not None
        frames: bytes | bytearray | None
        if count == 1:
            frames = send.encrypt_framed(_DATA_KIND, data)
        else:
            frames = send.encrypt_framed_run(_DATA_KIND, data, MAX_RECORD_BODY)
            if frames is None:
                self.send_data(data)
                return self.data_to_send()
        self._records_since_rekey += count
        self._bytes_since_rekey += size + count
        return frames

    def send_control(self, message: bytes) -> None:
        """Queue one CTRL record (JSON bytes by convention, at most :data:`MAX_RECORD_BODY` bytes)."""
        self._require_sendable()
        if len(message) > MAX_RECORD_BODY:
            raise UsageError(f"a control message is at most {MAX_RECORD_BODY} bytes")
        self._send_record(RecordType.CTRL, message)

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a PING; the peer's channel answers with a PONG carrying the same payload."""
        self._require_sendable()
        if len(payload) > MAX_RECORD_BODY:
            raise UsageError(f"a ping payload is at most {MAX_RECORD_BODY} bytes")
        self._send_record(RecordType.PING, payload)

    def rekey(self) -> None:
        """Queue a REKEY record and switch our sending key (the peer switches on receipt)."""
        self._require_sendable()
        self._rekey_now()

    def close(self) -> None:
        """Queue an authenticated CLOSE; :class:`Closed` follows when the peer's CLOSE arrives.

        Idempotent. Before the handshake completes there is nothing to close cleanly: drop the
        connection instead (a :class:`UsageError` says so).
        """
        self._check_usable()
        if self._close_sent or self._state is ChannelState.CLOSED:
            return
        if self._state is not ChannelState.ESTABLISHED:
            raise UsageError("close() before the handshake completed; just drop the connection")
        self._send_record(RecordType.CLOSE)
        self._close_sent = True

    def data_to_send(self) -> bytes:
        """Everything queued for the network since the last call, as one buffer.

        After a failure the queue is discarded and this raises like every other method.
        """
        self._check_usable()
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data


def _peek(buf: bytearray) -> int:
    return (buf[0] << 8) | buf[1]


def _flush_data(pending: list[bytes], events: list[ChannelEvent]) -> None:
    events.append(DataReceived(data=b"".join(pending)))
    pending.clear()
