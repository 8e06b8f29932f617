"""Noise (rev 34) for 25519_ChaChaPoly_BLAKE2b against the official cacophony and snow vectors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nacl.bindings
import pytest

from meshserial.errors import HandshakeError, ProtocolError, UsageError
from meshserial.proto import suite
from meshserial.proto.noise import (
    MAX_NONCE,
    PATTERNS,
    CipherState,
    HandshakeState,
    KeyPair,
    SymmetricState,
)

VECTOR_FILE = "noise_vectors_25519_ChaChaPoly_BLAKE2b.json"


def _vector_path() -> Path | None:
    """The shared vector file: $MESHSERIAL_NOISE_VECTORS (file or folder), else ../shared/vectors/noise/."""
    env = os.environ.get("MESHSERIAL_NOISE_VECTORS")
    if env:  # when set, only there: a wrong path is not quietly replaced by another file
        candidates = [Path(env), Path(env) / VECTOR_FILE]
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates = [repo / ".." / "shared" / "vectors" / "noise" / VECTOR_FILE]
    return next((c.resolve() for c in candidates if c.is_file()), None)


def _vectors_required() -> bool:
    """Whether missing vectors fail rather than skip: in CI (.ci/run sets MESHSERIAL_REQUIRE_VECTORS=1;
    most CI systems set CI=true), so that a CI machine without them cannot pass quietly."""
    flag = os.environ.get("MESHSERIAL_REQUIRE_VECTORS") or os.environ.get("CI") or ""
    return flag.strip().lower() not in ("", "0", "false", "no")


VECTOR_PATH = _vector_path()


def _load_vectors() -> list[dict[str, Any]]:
    if VECTOR_PATH is None:
        return []
    vectors: list[dict[str, Any]] = json.loads(VECTOR_PATH.read_text(encoding="utf-8"))["vectors"]
    return vectors


VECTORS = _load_vectors()
MISSING = f"Noise vectors absent: set MESHSERIAL_NOISE_VECTORS or add ../shared/vectors/noise/{VECTOR_FILE}"


@pytest.fixture
def _noise_vectors() -> None:
    """Skip a vector test when the file is missing, on a developer's machine; fail it in CI."""
    if VECTOR_PATH is None:
        if _vectors_required():
            pytest.fail(f"{MISSING} (required here: MESHSERIAL_REQUIRE_VECTORS or CI is set)", pytrace=False)
        pytest.skip(f"{MISSING}; CI requires them (MESHSERIAL_REQUIRE_VECTORS=1)")


needs_vectors = pytest.mark.usefixtures("_noise_vectors")


def _hex(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return bytes.fromhex(value) if value is not None else None


def _party(vector: dict[str, Any], role: str) -> HandshakeState:
    return HandshakeState(
        vector["protocol_name"],
        initiator=role == "init",
        prologue=_hex(vector, f"{role}_prologue") or b"",
        static=_hex(vector, f"{role}_static"),
        ephemeral=_hex(vector, f"{role}_ephemeral"),
        remote_static=_hex(vector, f"{role}_remote_static"),
        psks=[bytes.fromhex(p) for p in vector.get(f"{role}_psks", [])],
    )


def _vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['source']}-{vector['protocol_name']}"


@needs_vectors
def test_vector_file_covers_the_required_patterns() -> None:
    names = {v["protocol_name"].split("_")[1] for v in VECTORS}
    assert {"XX", "IK", "XK", "NK", "KK", "IX"} <= names


@needs_vectors
@pytest.mark.parametrize(
    "vector",
    # Without the file, one placeholder case, so that the fixture skips or fails it visibly.
    VECTORS or [pytest.param({}, id="no-vector-file")],
    ids=[_vector_id(v) for v in VECTORS] or None,
)
def test_vector(vector: dict[str, Any]) -> None:
    initiator, responder = _party(vector, "init"), _party(vector, "resp")
    messages = vector["messages"]
    # Handshake: the sender of message i is the initiator when i is even (interactive patterns).
    index = 0
    while not initiator.complete:
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        message = messages[index]
        payload, ciphertext = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        assert sender.write_message(payload) == ciphertext, f"handshake message {index}"
        assert receiver.read_message(ciphertext) == payload
        index += 1
    handshake_len = index
    assert responder.complete
    if "handshake_hash" in vector:
        assert initiator.handshake_hash == bytes.fromhex(vector["handshake_hash"])
    assert initiator.handshake_hash == responder.handshake_hash
    assert initiator.remote_static == KeyPair.from_private(_hex(vector, "resp_static") or b"").public
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    assert len(messages) > handshake_len, "vector has transport messages"
    for index in range(handshake_len, len(messages)):
        message = messages[index]
        payload, ciphertext = bytes.fromhex(message["payload"]), bytes.fromhex(message["ciphertext"])
        send, recv = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
        assert send.encrypt_with_ad(b"", payload) == ciphertext, f"transport message {index}"
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


# --------------------------------------------------------------------------------------------- REKEY


def test_rekey_matches_spec_definition() -> None:
    key = bytes(range(32))
    cipher = CipherState(key)
    cipher.encrypt_with_ad(b"", b"x")
    cipher.rekey()
    # §4.2: REKEY(k) = first 32 bytes of ENCRYPT(k, 2^64-1, zerolen, zeros).
    nonce = b"\x00" * 4 + MAX_NONCE.to_bytes(8, "little")
    expected_key = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(bytes(32), None, nonce, key)[:32]
    assert cipher.n == 1, "rekey keeps the nonce"
    expected = CipherState(expected_key)
    expected.n = 1
    assert cipher.encrypt_with_ad(b"ad", b"hello") == expected.encrypt_with_ad(b"ad", b"hello")


def test_rekey_both_sides_stay_in_step() -> None:
    send, recv = CipherState(bytes(32)), CipherState(bytes(32))
    for round_ in range(5):
        ct = send.encrypt_with_ad(b"", b"m%d" % round_)
        assert recv.decrypt_with_ad(b"", ct) == b"m%d" % round_
        send.rekey()
        recv.rekey()
    old = CipherState(bytes(32))
    old.n = send.n
    ct = send.encrypt_with_ad(b"", b"after")
    with pytest.raises(ProtocolError):
        old.decrypt_with_ad(b"", ct)
    assert recv.decrypt_with_ad(b"", ct) == b"after"


def test_rekey_without_key_is_misuse() -> None:
    with pytest.raises(UsageError):
        CipherState().rekey()


# --------------------------------------------------------------------------------------------- CipherState


def test_cipherstate_without_key_is_identity() -> None:
    cipher = CipherState()
    assert not cipher.has_key
    assert cipher.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cipher.decrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cipher.n == 0


def test_cipherstate_failures() -> None:
    send, recv = CipherState(bytes(32)), CipherState(bytes(32))
    ct = send.encrypt_with_ad(b"ad", b"payload")
    with pytest.raises(ProtocolError):
        recv.decrypt_with_ad(b"other", ct)
    assert recv.n == 0, "a failed decryption does not consume the nonce"
    with pytest.raises(ProtocolError):
        recv.decrypt_with_ad(b"ad", ct[:10])
    assert recv.decrypt_with_ad(b"ad", ct) == b"payload"
    with pytest.raises(ProtocolError):
        recv.decrypt_with_ad(b"ad", ct)  # replay: the nonce moved on


def test_cipherstate_nonce_exhaustion() -> None:
    cipher = CipherState(bytes(32))
    cipher.n = MAX_NONCE
    with pytest.raises(UsageError):
        cipher.encrypt_with_ad(b"", b"")
    with pytest.raises(ProtocolError):
        cipher.decrypt_with_ad(b"", bytes(16))


@pytest.fixture(params=["libsodium", "wrappers"])
def framed_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a framed-method test on the direct libsodium path and on PyNaCl's public wrappers."""
    if request.param == "wrappers":
        monkeypatch.setattr(suite, "sodium", None)
        monkeypatch.setattr(suite, "encrypt", suite.wrapped_encrypt)
        monkeypatch.setattr(suite, "decrypt", suite.wrapped_decrypt)
    return str(request.param)


@pytest.mark.parametrize("size", [0, 1, 64, 4095, 16 * 1024, 40_000, 65535 - 17])
def test_framed_methods_are_length_prefixed_noise_messages(framed_impl: str, size: int) -> None:
    body = os.urandom(size)
    send, reference, recv = (
        CipherState(bytes(range(32))),
        CipherState(bytes(range(32))),
        CipherState(bytes(range(32))),
    )
    for kind in (0, 1, 255):
        frame = send.encrypt_framed(kind, memoryview(body))
        message = reference.encrypt_with_ad(b"", bytes([kind]) + body)
        assert frame == len(message).to_bytes(2, "big") + message
        assert recv.decrypt_split(memoryview(frame)[2:]) == (kind, body)
    assert send.n == recv.n == 3


def test_framed_decrypt_failures_keep_the_nonce(framed_impl: str) -> None:
    send, recv = CipherState(bytes(32)), CipherState(bytes(32))
    frame = bytearray(send.encrypt_framed(4, b"payload"))
    frame[-1] ^= 1
    with pytest.raises(ProtocolError, match="tampered"):
        recv.decrypt_split(bytes(frame[2:]))
    assert recv.n == 0
    frame[-1] ^= 1
    assert recv.decrypt_split(bytes(frame[2:])) == (4, b"payload")
    with pytest.raises(ProtocolError):
        recv.decrypt_split(bytes(frame[2:]))  # replay: the nonce moved on
    empty = CipherState(bytes(32)).encrypt_with_ad(b"", b"")
    with pytest.raises(ProtocolError, match="empty"):
        CipherState(bytes(32)).decrypt_split(empty)


def test_framed_methods_follow_rekey_and_limits(framed_impl: str) -> None:
    send, recv = CipherState(bytes(32)), CipherState(bytes(32))
    send.rekey()
    recv.rekey()
    assert recv.decrypt_split(send.encrypt_framed(0, b"after rekey")[2:]) == (0, b"after rekey")
    send.n = MAX_NONCE
    with pytest.raises(UsageError):
        send.encrypt_framed(0, b"x")
    with pytest.raises(UsageError):
        CipherState(bytes(32)).encrypt_framed(0, bytes(65535))  # over Noise's message limit


@pytest.mark.parametrize("chunk", [1, 100, 16 * 1024])
def test_framed_run_is_encrypt_framed_of_each_piece(framed_impl: str, chunk: int) -> None:
    key = bytes(range(32))
    run, each, recv = CipherState(key), CipherState(key), CipherState(key)
    data = os.urandom(3 * chunk + 7)
    # The run needs the buffers that a first record makes: until then it declines, touching nothing.
    assert run.encrypt_framed_run(0, data, chunk) is None
    assert run.n == 0
    first = run.encrypt_framed(0, b"first")
    assert first == each.encrypt_framed(0, b"first")
    assert recv.decrypt_split(first[2:]) == (0, b"first")
    frames = run.encrypt_framed_run(0, memoryview(data), chunk)
    if framed_impl == "wrappers":  # no buffers ever: always record by record
        assert frames is None
        return
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    assert frames == b"".join(each.encrypt_framed(0, piece) for piece in pieces)
    assert run.n == each.n == 1 + len(pieces)
    view, pos, received = memoryview(frames), 0, b""
    while pos < len(view):
        size = view[pos] << 8 | view[pos + 1]
        kind, body = recv.decrypt_split(view[pos + 2 : pos + 2 + size])
        assert kind == 0
        received += body
        pos += 2 + size
    assert received == data


def test_framed_run_declines_what_it_cannot_seal_in_place() -> None:
    """Pieces over the buffer size, or a run that would reach the reserved last nonce, go the general
    way (None, nothing consumed); the general way then refuses the last nonce itself."""
    cipher = CipherState(bytes(32))
    cipher.encrypt_framed(0, b"make the buffers")
    assert cipher.encrypt_framed_run(0, b"x" * 40_000, 16 * 1024 + 64) is None
    cipher.n = MAX_NONCE - 3
    assert cipher.encrypt_framed_run(0, b"x" * 3, 1) is None
    assert cipher.n == MAX_NONCE - 3
    assert cipher.encrypt_framed_run(0, b"x" * 2, 1) is not None
    assert cipher.n == MAX_NONCE - 1
    cipher.encrypt_framed(0, b"x")
    with pytest.raises(UsageError, match="nonce space exhausted"):
        cipher.encrypt_framed(0, b"x")


def test_cipherstate_key_checks_and_repr_hides_key() -> None:
    with pytest.raises(UsageError):
        CipherState(b"short")
    cipher = CipherState()
    with pytest.raises(UsageError):
        cipher.initialize_key(b"short")
    key = bytes(range(32))
    cipher.initialize_key(key)
    assert key.hex() not in repr(cipher) and str(key) not in repr(cipher)
    assert "n=0" in repr(cipher)


def test_keypair_repr_hides_private() -> None:
    pair = KeyPair.from_private(bytes(range(32)))
    assert bytes(range(32)).hex() not in repr(pair)
    assert str(bytes(range(32))) not in repr(pair)
    with pytest.raises(UsageError):
        KeyPair.from_private(b"x")
    assert len(KeyPair.generate().public) == 32


def test_symmetric_state_long_name_is_hashed() -> None:
    short = SymmetricState(b"Noise_XX")
    assert short.h == b"Noise_XX".ljust(64, b"\x00")
    long_name = b"N" * 65
    import hashlib

    assert SymmetricState(long_name).h == hashlib.blake2b(long_name).digest()
    assert "h=" not in repr(short)


# --------------------------------------------------------------------------------------------- all patterns


def _keys() -> dict[str, bytes]:
    return {name: bytes([i + 1]) * 32 for i, name in enumerate(("is", "rs"))}


@pytest.mark.parametrize("name", [*sorted(PATTERNS), "XXpsk3", "NNpsk0", "NNpsk0+psk2", "IKpsk2", "XKpsk3"])
def test_every_pattern_round_trips(name: str) -> None:
    keys = _keys()
    pattern = PATTERNS[name[:2]]
    i_pub = KeyPair.from_private(keys["is"]).public
    r_pub = KeyPair.from_private(keys["rs"]).public
    psk_count = name.count("psk")
    psks = [bytes([9]) * 32] * psk_count
    initiator = HandshakeState(
        f"Noise_{name}_25519_ChaChaPoly_BLAKE2b",
        initiator=True,
        prologue=b"p",
        static=keys["is"] if name[0] in "KXI" else None,
        remote_static=r_pub if "s" in pattern.responder_pre else None,
        psks=psks,
    )
    responder = HandshakeState(
        f"Noise_{name}_25519_ChaChaPoly_BLAKE2b",
        initiator=False,
        prologue=b"p",
        static=keys["rs"] if name[1] in "KX" else None,
        remote_static=i_pub if "s" in pattern.initiator_pre else None,
        psks=psks,
    )
    turn = 0
    while not initiator.complete:
        sender, receiver = (initiator, responder) if turn % 2 == 0 else (responder, initiator)
        assert sender.is_my_turn and not receiver.is_my_turn
        assert receiver.read_message(sender.write_message(b"payload %d" % turn)) == b"payload %d" % turn
        turn += 1
    assert responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping")) == b"ping"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong")) == b"pong"
    if name[0] in "KXI":
        assert responder.remote_static == i_pub
    if name[1] in "KX":
        assert initiator.remote_static == r_pub
    assert name in repr(initiator)
    assert initiator.initiator and not responder.initiator
    assert initiator.remote_ephemeral is not None and responder.remote_ephemeral is not None
    with pytest.raises(UsageError, match="complete"):
        initiator.write_message(b"")


def _xx_pair() -> tuple[HandshakeState, HandshakeState]:
    name = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
    keys = _keys()
    return (
        HandshakeState(name, initiator=True, static=keys["is"]),
        HandshakeState(name, initiator=False, static=keys["rs"]),
    )


def test_handshake_misuse() -> None:
    initiator, responder = _xx_pair()
    with pytest.raises(UsageError):
        initiator.read_message(b"")
    with pytest.raises(UsageError):
        responder.write_message(b"")
    with pytest.raises(UsageError):
        initiator.split()
    with pytest.raises(UsageError):
        initiator.write_message(bytes(70000))
    with pytest.raises(UsageError):
        initiator.write_message(b"")  # failed write is terminal


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"protocol_name": "Noise_XX_448_ChaChaPoly_BLAKE2b"}, "suite"),
        ({"protocol_name": "Noise_ZZ_25519_ChaChaPoly_BLAKE2b"}, "pattern"),
        ({"protocol_name": "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b"}, "modifier"),
        ({"protocol_name": "Noise_XXpsk9_25519_ChaChaPoly_BLAKE2b"}, "past"),
        ({"protocol_name": "NotNoise"}, "Noise protocol name"),
        ({"protocol_name": "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"}, "pre-shared"),
        ({"protocol_name": "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b", "psks": [b"x"]}, "32 bytes"),
        ({"protocol_name": "Noise_IK_25519_ChaChaPoly_BLAKE2b"}, "peer's static"),
        ({"protocol_name": "Noise_KK_25519_ChaChaPoly_BLAKE2b", "remote_static": bytes(32)}, "our static"),
        ({"protocol_name": "Noise_XX_25519_ChaChaPoly_BLAKE2b", "remote_static": b"x"}, "public key"),
    ],
)
def test_handshake_construction_errors(kwargs: dict[str, Any], fragment: str) -> None:
    name = kwargs.pop("protocol_name")
    with pytest.raises(UsageError, match=fragment):
        HandshakeState(name, initiator=True, **kwargs)


def test_missing_static_when_writing() -> None:
    initiator = HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2b", initiator=True)
    responder = HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2b", initiator=False)
    responder.read_message(initiator.write_message())
    with pytest.raises(UsageError, match="static"):
        responder.write_message()


def test_handshake_read_failures_are_handshake_errors() -> None:
    initiator, responder = _xx_pair()
    msg1 = initiator.write_message()
    with pytest.raises(HandshakeError):
        responder.read_message(msg1[:31])
    with pytest.raises(UsageError):
        responder.read_message(msg1)  # failed state is terminal

    initiator, responder = _xx_pair()
    responder.read_message(initiator.write_message())
    tampered = bytearray(responder.write_message(b"id"))
    tampered[40] ^= 1
    with pytest.raises(HandshakeError):
        initiator.read_message(bytes(tampered))

    initiator, responder = _xx_pair()
    responder.read_message(initiator.write_message())
    msg2 = responder.write_message(b"id")
    with pytest.raises(HandshakeError, match="static"):
        initiator.read_message(msg2[:60])
    initiator, responder = _xx_pair()
    responder.read_message(initiator.write_message())
    msg2 = responder.write_message(b"")
    with pytest.raises(HandshakeError, match="tag"):
        initiator.read_message(msg2[:-1])
    initiator, responder = _xx_pair()
    responder.read_message(initiator.write_message())
    with pytest.raises(HandshakeError, match="longer"):
        initiator.read_message(bytes(70000))


def test_low_order_public_key_is_a_handshake_error() -> None:
    initiator, responder = _xx_pair()
    initiator.write_message()
    # The all-zero point has order 1: X25519 with it is all zeros, which libsodium rejects.
    assert responder.read_message(bytes(32)) == b""
    with pytest.raises(HandshakeError, match="low-order"):
        responder.write_message()
    with pytest.raises(UsageError, match="failed"):
        responder.write_message()
