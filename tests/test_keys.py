"""Identity derivation, id strings, handshake payloads and the identity key file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nacl.bindings
import nacl.encoding
import nacl.hash
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserial import keys
from meshserial.errors import HandshakeError, KeyFileError, UsageError
from meshserial.keys import (
    CERT_CONTEXT,
    MAX_HANDSHAKE_EXTRA,
    Identity,
    create_identity,
    fingerprint,
    format_id,
    identity_path,
    load_identity,
    load_or_create_identity,
    parse_id,
    verify_handshake_payload,
)
from meshserial.proto import bech32

SEED = bytes(range(32))
# Pinned so that an accidental change to the derivation (which would change every node's id) fails.
SEED_ID = "ms1l9s4stt7p3r3syayrw7au4ma08ewy7knm83f9qmy0dg3c5jvau5sta828w"
SEED_NOISE_PUBLIC = "35442faa1a10e00b2e16564a154cc6732ceffbebd5d59882c496ff4283299c5c"
SEED_SECRET = "MS-SECRET-KEY-1QQQSYQCYQ5RQWZQFPG9SCRGWPUGPZYSNZS23V9CCRYDPK8QARC0S0CPJ33"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MESHSERIAL_HOME", str(path))
    return path


def _blake(seed: bytes, person: bytes) -> bytes:
    return nacl.hash.blake2b(b"", digest_size=32, key=seed, person=person, encoder=nacl.encoding.RawEncoder)


# --- derivation ------------------------------------------------------------------------------


def test_derivation_matches_the_spec_computed_independently() -> None:
    ident = Identity(SEED)
    signing = nacl.signing.SigningKey(_blake(SEED, b"ms-ed25519"))
    assert ident.public_id == bytes(signing.verify_key)
    assert ident.noise_private == _blake(SEED, b"ms-x25519")
    assert ident.noise_public == nacl.bindings.crypto_scalarmult_base(ident.noise_private)
    signing.verify_key.verify(CERT_CONTEXT + ident.noise_public, ident.certificate)
    assert ident.sign(b"x") == signing.sign(b"x").signature


def test_derivation_known_answer() -> None:
    ident = Identity(SEED)
    assert ident.id_string == SEED_ID
    assert ident.noise_public.hex() == SEED_NOISE_PUBLIC
    assert ident.secret_text() == SEED_SECRET
    assert Identity.from_secret_text(SEED_SECRET).public_id == ident.public_id
    assert Identity.from_secret_text(SEED_SECRET.lower()).public_id == ident.public_id


def test_generated_identities_differ() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.public_id != b.public_id
    assert a.noise_public != b.noise_public
    assert len(a.public_id) == 32 and len(a.certificate) == 64


def test_repr_shows_no_secret() -> None:
    ident = Identity(SEED)
    text = repr(ident)
    assert SEED_ID in text
    for secret in (SEED.hex(), SEED_SECRET, ident.noise_private.hex(), SEED_SECRET[15:40]):
        assert secret not in text
    assert not hasattr(ident, "__dict__")


def test_bad_seed_length() -> None:
    with pytest.raises(UsageError, match="32 bytes"):
        Identity(b"short")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MS-SECRET-KEY-1QQQQ", "damaged"),
        (SEED_SECRET[:-1] + ("Q" if SEED_SECRET[-1] != "Q" else "P"), "damaged"),
        (bech32.encode("ms-secret-key-", bytes(31)).upper(), "31 bytes"),
        (SEED_ID, "not a meshserial secret key"),
    ],
)
def test_bad_secret_text(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        Identity.from_secret_text(text)
    assert text not in str(info.value)


# --- handshake payloads ----------------------------------------------------------------------


def test_handshake_payload_round_trip() -> None:
    ident = Identity(SEED)
    payload = ident.handshake_payload({"port": "ttyUSB0", "mode": "rw"})
    assert payload[:32] == ident.public_id
    assert payload[32:96] == ident.certificate
    assert payload[96:] == b'{"port":"ttyUSB0","mode":"rw"}'
    assert verify_handshake_payload(payload, ident.noise_public) == (
        ident.public_id,
        {"port": "ttyUSB0", "mode": "rw"},
    )


def test_handshake_payload_other_static_is_refused() -> None:
    a, b = Identity.generate(), Identity.generate()
    with pytest.raises(HandshakeError, match="certificate"):
        verify_handshake_payload(a.handshake_payload({}), b.noise_public)


def test_handshake_payload_claiming_someone_elses_id_is_refused() -> None:
    a, b = Identity.generate(), Identity.generate()
    forged = b.public_id + a.handshake_payload({})[32:]
    with pytest.raises(HandshakeError, match="certificate"):
        verify_handshake_payload(forged, a.noise_public)


@pytest.mark.parametrize("where", [0, 31, 32, 95])
def test_handshake_payload_tampering_is_refused(where: int) -> None:
    ident = Identity(SEED)
    payload = bytearray(ident.handshake_payload({"v": 1}))
    payload[where] ^= 0x01
    with pytest.raises(HandshakeError):
        verify_handshake_payload(bytes(payload), ident.noise_public)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (b'"x"', "not a JSON object"),
        (b"{bad", "not valid JSON"),
        (b'{"x":NaN}', "not valid JSON"),
        (b'{"x":"\xff"}', "not valid JSON"),
        (b"{" + b" " * MAX_HANDSHAKE_EXTRA + b"}", "too long"),
    ],
)
def test_handshake_payload_bad_json(body: bytes, message: str) -> None:
    ident = Identity(SEED)
    with pytest.raises(HandshakeError, match=message):
        verify_handshake_payload(ident.public_id + ident.certificate + body, ident.noise_public)


def test_handshake_payload_short_or_bad_static() -> None:
    ident = Identity(SEED)
    with pytest.raises(HandshakeError, match="too short"):
        verify_handshake_payload(ident.public_id, ident.noise_public)
    with pytest.raises(HandshakeError, match="32 bytes"):
        verify_handshake_payload(ident.handshake_payload({}), b"\x00" * 31)


def test_handshake_payload_sender_limits() -> None:
    ident = Identity(SEED)
    with pytest.raises(UsageError, match="plain JSON"):
        ident.handshake_payload({"x": object()})
    with pytest.raises(UsageError, match="plain JSON"):
        ident.handshake_payload({"x": float("nan")})
    with pytest.raises(UsageError, match="limit"):
        ident.handshake_payload({"x": "y" * MAX_HANDSHAKE_EXTRA})


@given(st.binary(max_size=300))
def test_handshake_payload_any_bytes(payload: bytes) -> None:
    try:
        verify_handshake_payload(payload, bytes(32))
    except HandshakeError:
        pass


# --- ids -------------------------------------------------------------------------------------


def test_id_format() -> None:
    ident = Identity(SEED)
    assert len(ident.id_string) == 61
    assert ident.id_string.startswith("ms1")
    assert parse_id(ident.id_string) == ident.public_id
    assert parse_id(f"  {ident.id_string.upper()}\n") == ident.public_id


@given(st.binary(min_size=32, max_size=32))
def test_format_id_round_trip_for_valid_keys(seed: bytes) -> None:
    ident = Identity(seed)
    assert parse_id(format_id(ident.public_id)) == ident.public_id


def test_parse_id_errors() -> None:
    good = Identity(SEED).id_string
    flipped = good[:10] + ("q" if good[10] != "q" else "p") + good[11:]
    with pytest.raises(UsageError, match="checksum"):
        parse_id(flipped)
    with pytest.raises(UsageError, match="start with ms1, not age1"):
        parse_id(bech32.encode("age", bytes(32)))
    with pytest.raises(UsageError, match="31 bytes"):
        parse_id(bech32.encode("ms", bytes(31)))
    with pytest.raises(UsageError, match="invite code"):
        parse_id(bech32.encode("msinv", bytes(57)))
    with pytest.raises(UsageError, match="not a usable Ed25519"):
        parse_id(bech32.encode("ms", bytes(32)))  # the identity point, low order
    with pytest.raises(UsageError, match="not a valid meshserial id"):
        parse_id("")
    with pytest.raises(UsageError, match="mixes upper and lower"):
        parse_id(good[:5] + good[5:].upper())


def test_parse_id_never_echoes_a_secret_key() -> None:
    with pytest.raises(UsageError, match="SECRET") as info:
        parse_id(SEED_SECRET)
    assert SEED_SECRET[15:] not in str(info.value)


def test_format_id_length_check() -> None:
    with pytest.raises(UsageError):
        format_id(bytes(31))


@given(st.text(max_size=120))
def test_parse_id_any_text(text: str) -> None:
    try:
        parse_id(text)
    except UsageError:
        pass


def test_fingerprint() -> None:
    fp = fingerprint(Identity(SEED).public_id)
    assert fp.startswith("SHA256:")
    assert len(fp) == 7 + 43
    assert fp == fingerprint(Identity(SEED).public_id)
    assert fp != fingerprint(Identity.generate().public_id)


# --- the identity file -----------------------------------------------------------------------


def test_create_and_load(home: Path) -> None:
    created = create_identity()
    path = identity_path()
    assert path == home / "identity.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    text = path.read_text()
    assert "# created: " in text
    assert f"# public id: {created.id_string}" in text
    assert [line for line in text.splitlines() if not line.startswith("#")] == [created.secret_text()]
    assert load_identity().public_id == created.public_id


def test_create_refuses_to_overwrite(home: Path) -> None:
    first = create_identity()
    before = identity_path().read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_identity()
    assert identity_path().read_bytes() == before
    assert load_identity().public_id == first.public_id


def test_load_or_create(home: Path) -> None:
    first, created = load_or_create_identity()
    assert created
    again, created_again = load_or_create_identity()
    assert not created_again
    assert again.public_id == first.public_id


def test_load_or_create_loses_a_race_gracefully(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = create_identity()
    real_load = keys._load
    calls = []

    def first_sees_nothing(path: Path) -> Identity | None:
        calls.append(path)
        return None if len(calls) == 1 else real_load(path)

    monkeypatch.setattr(keys, "_load", first_sees_nothing)
    ident, created = load_or_create_identity()
    assert not created and ident.public_id == other.public_id


def test_missing_identity(home: Path) -> None:
    with pytest.raises(KeyFileError, match="meshserial keygen"):
        load_identity()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660, 0o700 | 0o004])
def test_refuses_a_key_others_can_access(home: Path, mode: int) -> None:
    create_identity()
    os.chmod(identity_path(), mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {identity_path()}"):
        load_identity()


def test_accepts_stricter_modes(home: Path) -> None:
    create_identity()
    os.chmod(identity_path(), 0o400)
    load_identity()


def _write_key(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "exactly one"),
        ("# only a comment\n", "exactly one"),
        (f"{SEED_SECRET}\n{SEED_SECRET}\n", "exactly one"),
        (SEED_SECRET[:-2] + "\n", "damaged"),
        (f"{SEED_ID}\n", "not a meshserial secret key"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_malformed_identity_file(home: Path, text: str | bytes, message: str) -> None:
    _write_key(identity_path(), text)
    with pytest.raises(KeyFileError, match=message) as info:
        load_identity()
    assert SEED_SECRET[15:] not in str(info.value)


def test_identity_file_with_comments_and_blank_lines(home: Path) -> None:
    _write_key(identity_path(), f"# hello\n\n  {SEED_SECRET}  \n# bye\n")
    assert load_identity().id_string == SEED_ID


def test_identity_path_is_a_directory(home: Path) -> None:
    identity_path().mkdir(parents=True, mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity()


def test_oversized_file(home: Path) -> None:
    _write_key(identity_path(), "#" * (keys.MAX_FILE_SIZE + 10))
    with pytest.raises(KeyFileError, match="too large"):
        load_identity()


def test_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "node.key"
    ident = create_identity(path)
    assert load_identity(path).public_id == ident.public_id


def test_write_failure_leaves_no_partial_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(KeyFileError, match="No space left"):
        create_identity()
    assert not identity_path().exists()


def test_payload_json_is_compact() -> None:
    payload = Identity(SEED).handshake_payload({"a": [1, 2], "b": {"c": None}})
    assert payload[96:] == json.dumps({"a": [1, 2], "b": {"c": None}}, separators=(",", ":")).encode()
