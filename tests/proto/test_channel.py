"""The meshserial secure channel: paired initiator/responder over an in-memory pipe."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshserial.errors import ConnectionLost, HandshakeError, ProtocolError, UsageError
from meshserial.proto.channel import (
    DEFAULT_REKEY_AFTER_BYTES,
    DEFAULT_REKEY_AFTER_RECORDS,
    MAX_MSG2_PAYLOAD,
    MAX_MSG3_PAYLOAD,
    MAX_RECORD_BODY,
    MAX_RECORD_FRAME,
    PROLOGUE,
    ChannelEvent,
    ChannelState,
    Closed,
    ControlReceived,
    DataReceived,
    HandshakeComplete,
    PeerIdentified,
    PingReceived,
    PongReceived,
    RecordType,
    SecureChannel,
)
from meshserial.proto.noise import HandshakeState, KeyPair

CLIENT_STATIC = bytes(range(1, 33))
SERVER_STATIC = bytes(range(33, 65))
CLIENT_PAYLOAD = b"client-id|cert|{}"
SERVER_PAYLOAD = b"server-id|cert|{}"
MAX_BUFFER = 2 + MAX_RECORD_FRAME
EVENT_TYPES = (
    PeerIdentified,
    HandshakeComplete,
    DataReceived,
    ControlReceived,
    PingReceived,
    PongReceived,
    Closed,
)

Chunker = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def random_chunks(seed: int) -> Chunker:
    rng = random.Random(seed)

    def chunker(data: bytes) -> Iterator[bytes]:
        pos = 0
        while pos < len(data):
            size = rng.choice((1, 2, 3, 17, 100, 1500, 16403, 70000))
            yield data[pos : pos + size]
            pos += size

    return chunker


CHUNKERS = {"whole": whole, "bytes": byte_by_byte, "random1": random_chunks(1), "random2": random_chunks(2)}


# Fixed ephemeral keys: two handshakes made with them give byte-identical channels.
FIXED_EPHEMERALS = (bytes(range(1, 33)), bytes(range(33, 65)))


def make_pair(
    rekey_after_records: int = DEFAULT_REKEY_AFTER_RECORDS,
    rekey_after_bytes: int = DEFAULT_REKEY_AFTER_BYTES,
    ephemerals: tuple[bytes, bytes] | None = None,
) -> tuple[SecureChannel, SecureChannel]:
    client = SecureChannel(
        initiator=True,
        static_private=CLIENT_STATIC,
        payload=CLIENT_PAYLOAD,
        ephemeral=ephemerals[0] if ephemerals else None,
        rekey_after_records=rekey_after_records,
        rekey_after_bytes=rekey_after_bytes,
    )
    server = SecureChannel(
        initiator=False,
        static_private=SERVER_STATIC,
        payload=SERVER_PAYLOAD,
        ephemeral=ephemerals[1] if ephemerals else None,
        rekey_after_records=rekey_after_records,
        rekey_after_bytes=rekey_after_bytes,
    )
    return client, server


def pump(src: SecureChannel, dst: SecureChannel, chunker: Chunker = whole) -> list[ChannelEvent]:
    events: list[ChannelEvent] = []
    for chunk in chunker(src.data_to_send()):
        events += dst.receive_data(chunk)
        assert dst.bytes_buffered <= MAX_BUFFER
    return events


def handshake(
    chunker: Chunker = whole,
    rekey_after_records: int = DEFAULT_REKEY_AFTER_RECORDS,
    rekey_after_bytes: int = DEFAULT_REKEY_AFTER_BYTES,
    ephemerals: tuple[bytes, bytes] | None = None,
) -> tuple[SecureChannel, SecureChannel]:
    client, server = make_pair(rekey_after_records, rekey_after_bytes, ephemerals)
    client.initiate()
    assert pump(client, server, chunker) == []
    events = pump(server, client, chunker)
    assert events == [PeerIdentified(remote_static=pub(SERVER_STATIC), payload=SERVER_PAYLOAD)]
    done = client.accept_peer()
    assert done == [HandshakeComplete(handshake_hash=client.handshake_hash)]
    events = pump(client, server, chunker)
    assert events == [
        PeerIdentified(remote_static=pub(CLIENT_STATIC), payload=CLIENT_PAYLOAD),
        HandshakeComplete(handshake_hash=server.handshake_hash),
    ]
    return client, server


def pub(private: bytes) -> bytes:
    return KeyPair.from_private(private).public


def frames(wire: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(wire):
        (length,) = struct.unpack_from(">H", wire, pos)
        out.append(wire[pos + 2 : pos + 2 + length])
        pos += 2 + length
    assert pos == len(wire)
    return out


def frame(message: bytes) -> bytes:
    return struct.pack(">H", len(message)) + message


def data_of(events: list[ChannelEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


# --------------------------------------------------------------------------------------------- handshake


@pytest.mark.parametrize("name", list(CHUNKERS))
def test_handshake_and_data_any_chunking(name: str) -> None:
    chunker = CHUNKERS[name]
    client, server = handshake(chunker)
    assert client.established and server.established
    assert client.handshake_hash == server.handshake_hash and len(client.handshake_hash) == 64
    assert client.remote_static == pub(SERVER_STATIC)
    assert server.remote_static == pub(CLIENT_STATIC)
    payload = random.Random(7).randbytes(100_000)
    client.send_data(payload)
    assert data_of(pump(client, server, chunker)) == payload
    server.send_data(payload[::-1])
    assert data_of(pump(server, client, chunker)) == payload[::-1]


def test_handshake_message_sizes() -> None:
    client, server = make_pair()
    client.initiate()
    msg1 = client.data_to_send()
    assert msg1[:2] == b"\x00\x20" and len(msg1) == 34
    server.receive_data(msg1)
    msg2 = server.data_to_send()
    assert frames(msg2)[0] == msg2[2:] and len(msg2) == 2 + 32 + 48 + len(SERVER_PAYLOAD) + 16
    client.receive_data(msg2)
    assert client.state is ChannelState.AWAIT_ACCEPT and not client.established
    assert client.data_to_send() == b"", "msg3 waits for accept_peer()"
    client.accept_peer()
    msg3 = client.data_to_send()
    assert len(msg3) == 2 + 48 + len(CLIENT_PAYLOAD) + 16


def test_handshake_matches_plain_noise_with_prologue() -> None:
    """The channel is Noise XX with our prologue: a bare HandshakeState can talk to it."""
    eph = bytes([7]) * 32
    client = SecureChannel(initiator=True, static_private=CLIENT_STATIC, payload=b"c", ephemeral=eph)
    peer = HandshakeState(
        "Noise_XX_25519_ChaChaPoly_BLAKE2b", initiator=False, prologue=PROLOGUE, static=SERVER_STATIC
    )
    client.initiate()
    msg1 = frames(client.data_to_send())[0]
    assert msg1 == pub(eph)
    assert peer.read_message(msg1) == b""
    events = client.receive_data(frame(peer.write_message(b"s")))
    assert events == [PeerIdentified(remote_static=pub(SERVER_STATIC), payload=b"s")]
    client.accept_peer()
    assert peer.read_message(frames(client.data_to_send())[0]) == b"c"
    assert peer.handshake_hash == client.handshake_hash
    send, recv = peer.split()
    client.send_data(b"hi")
    assert recv.decrypt_with_ad(b"", frames(client.data_to_send())[0]) == b"\x00hi"
    assert client.receive_data(frame(send.encrypt_with_ad(b"", b"\x01{}"))) == [
        ControlReceived(message=b"{}")
    ]


def test_wrong_prologue_fails() -> None:
    client = SecureChannel(initiator=True, static_private=CLIENT_STATIC, payload=b"")
    peer = HandshakeState(
        "Noise_XX_25519_ChaChaPoly_BLAKE2b", initiator=False, prologue=b"other", static=SERVER_STATIC
    )
    client.initiate()
    peer.read_message(frames(client.data_to_send())[0])
    with pytest.raises(HandshakeError):
        client.receive_data(frame(peer.write_message(b"")))


def test_handshake_is_deterministic_with_injected_ephemerals() -> None:
    def run() -> bytes:
        client = SecureChannel(
            initiator=True, static_private=CLIENT_STATIC, payload=b"c", ephemeral=b"\x05" * 32
        )
        server = SecureChannel(
            initiator=False, static_private=SERVER_STATIC, payload=b"s", ephemeral=b"\x06" * 32
        )
        client.initiate()
        pump(client, server)
        pump(server, client)
        client.accept_peer()
        pump(client, server)
        return client.handshake_hash

    assert run() == run()


def test_responder_accept_peer() -> None:
    _, server = make_pair()
    with pytest.raises(UsageError):
        server.accept_peer()
    _, server = handshake()
    assert server.accept_peer() == []


def test_handshake_misuse() -> None:
    client, server = make_pair()
    with pytest.raises(UsageError):
        server.initiate()
    with pytest.raises(UsageError):
        client.accept_peer()
    with pytest.raises(UsageError):
        client.send_data(b"x")
    with pytest.raises(UsageError):
        client.rekey()
    with pytest.raises(UsageError):
        client.close()
    with pytest.raises(UsageError):
        _ = client.handshake_hash
    client.initiate()
    with pytest.raises(UsageError):
        client.initiate()
    assert client.remote_static is None
    assert "initiator" in repr(client) and "await-msg2" in repr(client)


@pytest.mark.parametrize(
    ("initiator", "kwargs"),
    [
        (True, {"static_private": b"short", "payload": b""}),
        (True, {"static_private": CLIENT_STATIC, "payload": bytes(MAX_MSG3_PAYLOAD + 1)}),
        (False, {"static_private": SERVER_STATIC, "payload": bytes(MAX_MSG2_PAYLOAD + 1)}),
        (True, {"static_private": CLIENT_STATIC, "payload": b"", "rekey_after_records": 0}),
    ],
)
def test_construction_errors(initiator: bool, kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        SecureChannel(initiator=initiator, **kwargs)  # type: ignore[arg-type]


def test_max_payloads_fit_the_1kib_cap() -> None:
    client = SecureChannel(initiator=True, static_private=CLIENT_STATIC, payload=bytes(MAX_MSG3_PAYLOAD))
    server = SecureChannel(initiator=False, static_private=SERVER_STATIC, payload=bytes(MAX_MSG2_PAYLOAD))
    client.initiate()
    pump(client, server)
    wire = server.data_to_send()
    assert len(wire) == 2 + 1024
    client.receive_data(wire)
    client.accept_peer()
    wire = client.data_to_send()
    assert len(wire) == 2 + 1024
    assert server.receive_data(wire)[-1] == HandshakeComplete(handshake_hash=client.handshake_hash)


# ------------------------------------------------------------------------------------- handshake attacks


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64, 65535])
def test_msg1_must_be_exactly_32_bytes(length: int) -> None:
    _, server = make_pair()
    with pytest.raises(HandshakeError, match="outside"):
        server.receive_data(struct.pack(">H", length))  # rejected on the header alone
    with pytest.raises(HandshakeError, match="already failed"):
        server.receive_data(b"")


def test_msg1_low_order_key() -> None:
    _, server = make_pair()
    with pytest.raises(HandshakeError, match="low-order"):
        server.receive_data(frame(bytes(32)))
    with pytest.raises(HandshakeError):
        server.data_to_send()


@pytest.mark.parametrize("length", [0, 95, 1025, 65535])
def test_msg2_size_limits(length: int) -> None:
    client, _ = make_pair()
    client.initiate()
    with pytest.raises(HandshakeError):
        client.receive_data(struct.pack(">H", length))


@pytest.mark.parametrize("length", [0, 63, 1025])
def test_msg3_size_limits(length: int) -> None:
    client, server = make_pair()
    client.initiate()
    pump(client, server)
    with pytest.raises(HandshakeError):
        server.receive_data(struct.pack(">H", length))


def test_peer_speaking_out_of_turn() -> None:
    client, server = make_pair()
    with pytest.raises(HandshakeError, match="out of turn"):
        client.receive_data(b"\x00")  # before initiate(): the responder never speaks first
    client, server = make_pair()
    client.initiate()
    pump(client, server)
    with pytest.raises(HandshakeError, match="out of turn"):
        client.receive_data(server.data_to_send() + b"\x00")  # nothing may follow msg2


@pytest.mark.parametrize("which", ["msg2", "msg3"])
@pytest.mark.parametrize("bit", [0, 8 * 40 + 3, -1])
def test_tampered_handshake(which: str, bit: int) -> None:
    client, server = make_pair()
    client.initiate()
    pump(client, server)
    wire = server.data_to_send()
    if which == "msg3":
        client.receive_data(wire)
        client.accept_peer()
        wire = client.data_to_send()
        target = server
    else:
        target = client
    tampered = bytearray(wire)
    index = 2 + (bit // 8 if bit >= 0 else len(wire) - 3)
    tampered[index] ^= 1 << (bit % 8 if bit >= 0 else 0)
    with pytest.raises(HandshakeError):
        target.receive_data(bytes(tampered))
    assert target.state is ChannelState.FAILED and not target.established


def test_garbage_to_responder() -> None:
    _, server = make_pair()
    with pytest.raises(HandshakeError):
        server.receive_data(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")


# --------------------------------------------------------------------------------------------- records


def test_control_ping_pong() -> None:
    client, server = handshake()
    client.send_control(b'{"invite": "x"}')
    client.send_ping(b"p1")
    client.send_ping()
    assert pump(client, server) == [
        ControlReceived(message=b'{"invite": "x"}'),
        PingReceived(payload=b"p1"),
        PingReceived(payload=b""),
    ]
    assert pump(server, client) == [PongReceived(payload=b"p1"), PongReceived(payload=b"")]
    with pytest.raises(UsageError):
        client.send_control(bytes(MAX_RECORD_BODY + 1))
    with pytest.raises(UsageError):
        client.send_ping(bytes(MAX_RECORD_BODY + 1))


def test_data_records_are_chunked_and_coalesced() -> None:
    client, server = handshake()
    payload = bytes(range(256)) * 300  # 76800 bytes -> 5 records
    client.send_data(payload)
    client.send_data(b"")
    wire = client.data_to_send()
    assert [len(f) for f in frames(wire)] == [1 + MAX_RECORD_BODY + 16] * 4 + [
        1 + 76800 - 4 * MAX_RECORD_BODY + 16
    ]
    events = server.receive_data(wire)
    assert events == [DataReceived(data=payload)], "one event per call for consecutive DATA"
    client.send_data(b"a")
    client.send_control(b"{}")
    client.send_data(b"b")
    assert server.receive_data(client.data_to_send()) == [
        DataReceived(data=b"a"),
        ControlReceived(message=b"{}"),
        DataReceived(data=b"b"),
    ]


def test_event_reprs_hide_payloads() -> None:
    secret = b"hunter2-serial-bytes"
    for event in (
        DataReceived(data=secret),
        ControlReceived(message=secret),
        PingReceived(payload=secret),
        PongReceived(payload=secret),
        PeerIdentified(remote_static=bytes(32), payload=secret),
    ):
        assert "hunter2" not in repr(event)
        assert f"<{len(secret)} bytes>" in repr(event)


@pytest.mark.parametrize("bit", [0, 7, 8 * 16, -1])
def test_tampered_record_is_terminal(bit: int) -> None:
    client, server = handshake()
    client.send_data(b"first")
    client.send_data(b"second")
    wire = bytearray(client.data_to_send())
    first = frames(bytes(wire))[0]
    index = 2 + (bit // 8 if bit >= 0 else len(first) - 1)
    wire[index] ^= 1 << (bit % 8 if bit >= 0 else 7)
    with pytest.raises(ProtocolError, match="decryption failed"):
        server.receive_data(bytes(wire))
    for call in (
        lambda: server.receive_data(b""),
        lambda: server.send_data(b"x"),
        server.data_to_send,
        server.close,
        server.eof_received,
    ):
        with pytest.raises(ProtocolError, match="already failed"):
            call()
    assert server.state is ChannelState.FAILED
    assert server.bytes_buffered == 0


def test_replayed_record() -> None:
    client, server = handshake()
    client.send_data(b"once")
    wire = client.data_to_send()
    assert server.receive_data(wire) == [DataReceived(data=b"once")]
    with pytest.raises(ProtocolError):
        server.receive_data(wire)


def test_reordered_records() -> None:
    client, server = handshake()
    client.send_data(b"one")
    client.send_data(b"two")
    first, second = frames(client.data_to_send())
    with pytest.raises(ProtocolError):
        server.receive_data(frame(second) + frame(first))


def test_dropped_record() -> None:
    client, server = handshake()
    client.send_data(b"one")
    client.data_to_send()
    client.send_data(b"two")
    with pytest.raises(ProtocolError):
        server.receive_data(client.data_to_send())


def test_reflected_record() -> None:
    """A record sent back to its author does not decrypt: each direction has its own key."""
    client, _ = handshake()
    client.send_data(b"mirror")
    with pytest.raises(ProtocolError):
        client.receive_data(client.data_to_send())


@pytest.mark.parametrize("length", [0, 16, MAX_RECORD_FRAME + 1, 65535])
def test_record_frame_size_limits(length: int) -> None:
    _, server = handshake()
    with pytest.raises(ProtocolError, match="outside"):
        server.receive_data(struct.pack(">H", length))
    assert server.bytes_buffered == 0


def test_split_header_oversize_frame() -> None:
    _, server = handshake()
    server.receive_data(b"\xff")
    assert server.bytes_buffered == 1
    with pytest.raises(ProtocolError, match="outside"):
        server.receive_data(b"\xff" + bytes(100))


def test_max_size_frame_is_buffered_within_bounds() -> None:
    client, server = handshake()
    client.send_data(bytes(MAX_RECORD_BODY))
    wire = client.data_to_send()
    assert len(wire) == MAX_BUFFER
    assert server.receive_data(wire[:-1]) == []
    assert server.bytes_buffered == MAX_BUFFER - 1
    assert server.receive_data(wire[-1:]) == [DataReceived(data=bytes(MAX_RECORD_BODY))]
    assert server.bytes_buffered == 0


@pytest.mark.parametrize(
    ("plaintext", "match"),
    [
        (b"\x09", "unknown record type"),
        (b"\xff" + b"x" * 10, "unknown record type"),
        (bytes([RecordType.REKEY]) + b"x", "REKEY record with a body"),
        (bytes([RecordType.CLOSE]) + b"x", "CLOSE record with a body"),
    ],
)
def test_malformed_records(plaintext: bytes, match: str) -> None:
    client, server = handshake()
    client._send_record(plaintext[0], plaintext[1:])
    with pytest.raises(ProtocolError, match=match):
        server.receive_data(client.data_to_send())


def test_empty_data_record_is_tolerated() -> None:
    client, server = handshake()
    client._send_record(RecordType.DATA)
    assert server.receive_data(client.data_to_send()) == []


# --------------------------------------------------------------------------------------------- rekey


def test_manual_rekey_mid_stream() -> None:
    client, server = handshake(random_chunks(3))
    for round_ in range(4):
        client.send_data(b"before %d" % round_)
        client.rekey()
        client.send_data(b"after %d" % round_)
        server.send_data(b"server %d" % round_)
        server.rekey()
        assert (
            data_of(pump(client, server, random_chunks(round_)))
            == b"before %d" % round_ + b"after %d" % round_
        )
        assert data_of(pump(server, client)) == b"server %d" % round_


def test_rekey_changes_the_key() -> None:
    client, server = handshake()
    client.rekey()
    (rekey_record,) = frames(client.data_to_send())
    assert len(rekey_record) == 1 + 16
    client.send_data(b"x")
    after = client.data_to_send()
    # Without the REKEY record the receiver still has the old key, so the next record fails.
    with pytest.raises(ProtocolError):
        server.receive_data(after)


@pytest.mark.parametrize("kwargs", [{"rekey_after_records": 3}, {"rekey_after_bytes": 500}])
def test_automatic_rekey(kwargs: dict[str, int]) -> None:
    client, server = handshake(whole, **kwargs)
    payload = bytes(range(200))
    for _ in range(10):
        client.send_data(payload)
    wire = client.data_to_send()
    sizes = [len(f) for f in frames(wire)]
    rekeys = sizes.count(17)
    assert rekeys >= 2
    assert sizes.count(1 + 200 + 16) == 10
    assert data_of(server.receive_data(wire)) == payload * 10


def test_auto_rekey_never_follows_close() -> None:
    client, server = handshake(rekey_after_records=1)
    client.send_data(b"x")
    client.close()
    sizes = [len(f) for f in frames(client.data_to_send())]
    assert sizes[-1] == 17 and sizes[-2] == 17, "REKEY then CLOSE, never REKEY after CLOSE"
    # Verify the receiver sees CLOSE last.
    client2, server2 = handshake(rekey_after_records=1)
    client2.send_data(b"x")
    client2.close()
    assert server2.receive_data(client2.data_to_send())[-1] == Closed()
    del server


# --------------------------------------------------------------------------------------------- close / EOF


def test_close_exchange() -> None:
    client, server = handshake()
    client.send_data(b"last words")
    client.close()
    client.close()  # idempotent
    with pytest.raises(UsageError):
        client.send_data(b"x")
    with pytest.raises(UsageError):
        client.rekey()
    events = pump(client, server)
    assert events == [DataReceived(data=b"last words"), Closed()]
    assert server.state is ChannelState.CLOSED and not server.established
    assert pump(server, client) == [Closed()]
    assert client.state is ChannelState.CLOSED
    client.eof_received()
    server.eof_received()
    server.close()  # no-op after the exchange
    assert server.data_to_send() == b""


def test_data_after_close_is_protocol_error() -> None:
    client, server = handshake()
    client.close()
    wire = client.data_to_send()
    client._close_sent = False  # simulate a peer that keeps talking after CLOSE
    client._state = ChannelState.ESTABLISHED
    client.send_data(b"zombie")
    with pytest.raises(ProtocolError, match="after its CLOSE"):
        server.receive_data(wire + client.data_to_send())


def test_ping_crossing_close_gets_no_pong() -> None:
    client, server = handshake()
    client.close()
    server.send_ping(b"?")
    assert pump(server, client) == [PingReceived(payload=b"?")]
    assert pump(client, server) == [Closed()]  # only the CLOSE, no PONG
    assert pump(server, client) == [Closed()]


def test_eof_without_close_is_truncation() -> None:
    client, server = handshake()
    client.send_data(b"partial")
    server.receive_data(client.data_to_send())
    with pytest.raises(ConnectionLost, match="truncated"):
        server.eof_received()
    with pytest.raises(ConnectionLost, match="already failed"):
        server.send_data(b"x")


def test_eof_after_only_our_close_is_truncation() -> None:
    client, _ = handshake()
    client.close()
    with pytest.raises(ConnectionLost):
        client.eof_received()


def test_eof_during_handshake() -> None:
    client, _ = make_pair()
    client.initiate()
    with pytest.raises(ConnectionLost):
        client.eof_received()


# --------------------------------------------------------------------------------------------- hostile input


def _fresh(role: str) -> SecureChannel:
    client, server = make_pair()
    if role == "initiator":
        client.initiate()
        return client
    if role == "responder":
        return server
    client, server = handshake()
    return client if role == "established-initiator" else server


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    role=st.sampled_from(["initiator", "responder", "established-initiator", "established-responder"]),
    chunks=st.lists(st.binary(max_size=300), max_size=8),
)
def test_any_bytes_give_events_or_protocol_errors(role: str, chunks: list[bytes]) -> None:
    channel = _fresh(role)
    for chunk in chunks:
        try:
            events = channel.receive_data(chunk)
        except ProtocolError:
            assert channel.state is ChannelState.FAILED
            break
        assert all(isinstance(e, EVENT_TYPES) for e in events)
        assert channel.bytes_buffered <= MAX_BUFFER


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.binary(max_size=4),
    length=st.integers(min_value=0, max_value=65535),
    body=st.binary(max_size=2000),
)
def test_framed_garbage_after_handshake(prefix: bytes, length: int, body: bytes) -> None:
    _, server = handshake()
    with pytest.raises(ProtocolError):
        server.receive_data(prefix + struct.pack(">H", length) + body)
        server.receive_data(bytes(MAX_BUFFER))
    assert server.bytes_buffered == 0


@settings(max_examples=50, deadline=None)
@given(flip=st.integers(min_value=0, max_value=8 * 400 - 1), seed=st.integers(0, 2**16))
def test_any_single_bit_flip_in_a_session_is_caught(flip: int, seed: int) -> None:
    client, server = handshake()
    client.send_data(random.Random(seed).randbytes(300))
    client.send_control(b"{}")
    wire = bytearray(client.data_to_send())
    wire[flip // 8 % len(wire)] ^= 1 << (flip % 8)
    # A flipped length bit may make the last frame look incomplete: then EOF reports truncation.
    with pytest.raises((ProtocolError, ConnectionLost)):
        server.receive_data(bytes(wire))
        server.eof_received()


def test_large_input_buffer_stays_bounded() -> None:
    client, server = handshake()
    client.send_data(bytes(3 * 1024 * 1024))
    wire = client.data_to_send()
    events = server.receive_data(wire + wire[:1000])  # a huge single read plus a partial frame
    assert data_of(events) == bytes(3 * 1024 * 1024)
    assert server.bytes_buffered == 1000


# --------------------------------------------------------------------------------------------- sans-IO


def test_channel_imports_no_io() -> None:
    code = (
        "import sys, meshserial.proto.channel, meshserial.proto.noise\n"
        "bad = {'asyncio', 'socket', 'selectors', 'serial', 'zeroconf', 'aiohttp'} & set(sys.modules)\n"
        "print(sorted(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_seal_data_is_send_data_plus_data_to_send() -> None:
    """The one-call data path produces exactly what the general path would."""
    client, server = handshake()
    twin_client, twin_server = handshake()
    for payload in (b"x", bytes(range(256)), b"y" * MAX_RECORD_BODY, b"z" * (MAX_RECORD_BODY + 1)):
        wire = client.seal_data(payload)
        assert server.receive_data(wire) == [DataReceived(data=payload)]
        twin_client.send_data(payload)
        assert twin_server.receive_data(twin_client.data_to_send()) == [DataReceived(data=payload)]
    client.send_control(b"{}")  # queued output goes out first, in order
    wire = client.seal_data(b"after")
    assert server.receive_data(wire) == [ControlReceived(message=b"{}"), DataReceived(data=b"after")]


@pytest.mark.parametrize(
    "limits",
    [{}, {"rekey_after_records": 3}, {"rekey_after_bytes": 3 * MAX_RECORD_BODY}],
    ids=["no-rekey", "rekey-by-records", "rekey-by-bytes"],
)
def test_seal_data_matches_the_general_path_byte_for_byte(limits: dict[str, int]) -> None:
    """Whichever way seal_data goes (one record, a run of records, the general path when a rekey
    falls due), the bytes on the wire are those of send_data + data_to_send."""
    fast, fast_peer = handshake(ephemerals=FIXED_EPHEMERALS, **limits)
    general, _ = handshake(ephemerals=FIXED_EPHEMERALS, **limits)
    received = bytearray()
    sizes = [1, 3 * MAX_RECORD_BODY + 5, 64, MAX_RECORD_BODY, 2 * MAX_RECORD_BODY, 7, 5 * MAX_RECORD_BODY - 1]
    for number, size in enumerate(sizes):
        payload = bytes([number]) * size
        wire = fast.seal_data(payload)
        general.send_data(payload)
        assert bytes(wire) == general.data_to_send(), f"write {number} ({size} bytes)"
        for event in fast_peer.receive_data(wire):
            assert isinstance(event, DataReceived)
            received += event.data
    assert bytes(received) == b"".join(bytes([n]) * size for n, size in enumerate(sizes))


def test_receive_fast_matches_receive_data() -> None:
    """The data-path receive gives the payload of a lone DATA record and events for anything else."""
    client, server = handshake()
    client.send_data(b"one")
    assert server.receive_fast(client.data_to_send()) == b"one"
    client.send_control(b"{}")
    assert server.receive_fast(client.data_to_send()) == [ControlReceived(message=b"{}")]
    client.send_data(b"a")
    client.send_data(b"b")
    assert server.receive_fast(client.data_to_send()) == b"ab"
    client.send_data(b"c")
    client.send_data(b"d")
    wire = client.data_to_send()
    assert server.receive_fast(wire[:-3]) == b"c", "whole records now, the partial one kept"
    assert server.receive_fast(wire[-3:]) == b"d"
    assert server.receive_fast(wire[:0]) == []
    client.send_data(b"e")
    client.send_control(b"{}")
    assert server.receive_fast(client.data_to_send()) == [
        DataReceived(data=b"e"),
        ControlReceived(message=b"{}"),
    ]
    client.send_data(b"tampered")
    wire = bytearray(client.data_to_send())
    wire[-1] ^= 1
    with pytest.raises(ProtocolError):
        server.receive_fast(bytes(wire))
    with pytest.raises(ProtocolError):  # the first failure is terminal
        server.receive_fast(b"")


def test_empty_data_record_is_tolerated_on_every_receive_path() -> None:
    """An empty DATA record yields nothing whether it arrives whole (the data path), split (the
    general loop), or through receive_fast, and the records around it still arrive."""
    client, server = handshake()
    client._send_record(RecordType.DATA)
    assert server.receive_fast(client.data_to_send()) == []
    client._send_record(RecordType.DATA)
    assert [e for chunk in byte_by_byte(client.data_to_send()) for e in server.receive_data(chunk)] == []
    client.send_data(b"a")
    client._send_record(RecordType.DATA)
    client.send_data(b"b")
    assert server.receive_data(client.data_to_send()) == [DataReceived(data=b"ab")]


def test_seal_data_before_any_record_takes_the_general_path() -> None:
    """The first write after the handshake, several records long, finds no framing buffers yet (the
    first record makes them): it goes record by record and still matches send_data byte for byte."""
    fast, fast_peer = handshake(ephemerals=FIXED_EPHEMERALS)
    general, _ = handshake(ephemerals=FIXED_EPHEMERALS)
    payload = bytes(range(256)) * (3 * MAX_RECORD_BODY // 256) + b"tail"
    wire = fast.seal_data(payload)
    general.send_data(payload)
    assert bytes(wire) == general.data_to_send()
    assert len(frames(bytes(wire))) == 4
    assert fast_peer.receive_data(wire) == [DataReceived(data=payload)]
    # The buffers exist now, and the next run is sealed in one buffer, still the same bytes.
    wire = fast.seal_data(payload)
    general.send_data(payload)
    assert bytes(wire) == general.data_to_send()
    assert fast_peer.receive_data(wire) == [DataReceived(data=payload)]
