"""One-time invites: code format, proofs bound to the session, and server-side redemption."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserial.errors import ConfigError, KeyFileError, Refused, UsageError
from meshserial.invites import (
    INVITE_VERSION,
    MAX_INVITE_TTL,
    InviteStore,
    create_invite,
    invite_proof,
    parse_invite,
    redeem_invite,
)
from meshserial.keys import Identity, parse_id
from meshserial.proto import bech32
from meshserial.trust import AuthorizedClients

SERVER = Identity(bytes([7]) * 32)
CLIENT = Identity(bytes([8]) * 32)
NOW = 1_780_000_000.0
H = hashlib.blake2b(b"handshake 1").digest()  # Noise_…_BLAKE2b handshake hashes are 64 bytes


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MESHSERIAL_HOME", str(path))
    return path


def _redeem(code: str, *, h: bytes = H, now: float = NOW + 60, proof: bytes | None = None) -> str:
    parsed = parse_invite(code)
    return redeem_invite(
        parsed.invite_id,
        invite_proof(parsed.secret, h) if proof is None else proof,
        h,
        CLIENT.public_id,
        now=now,
        client_name="alice",
    )


def test_code_layout(home: Path) -> None:
    code = create_invite(SERVER, ports_spec="ttyUSB0=rw", ttl_seconds=900, now=NOW)
    assert code.startswith("msinv1")
    assert len(code) > 90  # longer than BIP-173 allows, on purpose
    hrp, data = bech32.decode(code)
    assert hrp == "msinv" and len(data) == 57 and data[0] == INVITE_VERSION
    parsed = parse_invite(code)
    assert parsed.server_id == SERVER.public_id
    assert len(parsed.invite_id) == 8 and len(parsed.secret) == 16
    assert parsed.hints == ()
    assert parsed.secret.hex() not in repr(parsed)
    assert parse_invite(f"  {code.upper()}  ") == parsed


def test_hints_round_trip(home: Path) -> None:
    hints = ["192.168.1.5:7040", "[fe80::1%eth0]:7040", "bench.example.org:1"]
    code = create_invite(SERVER, ports_spec="*=ro", ttl_seconds=60, now=NOW, hints=hints)
    assert parse_invite(code).hints == tuple(hints)


@pytest.mark.parametrize("hint", ["nohost", ":7040", "host:", "host:0", "host:65536", "ho st:1", "host:٣"])
def test_bad_hints_are_refused(home: Path, hint: str) -> None:
    with pytest.raises(UsageError, match="address hint"):
        create_invite(SERVER, ports_spec="*=ro", ttl_seconds=60, now=NOW, hints=[hint])


def test_too_many_or_too_long_hints(home: Path) -> None:
    with pytest.raises(UsageError, match="at most 8"):
        create_invite(SERVER, ports_spec="*=ro", ttl_seconds=60, hints=["h:1"] * 9)
    with pytest.raises(UsageError, match="too long"):
        create_invite(SERVER, ports_spec="*=ro", ttl_seconds=60, hints=["h" * 200 + ":1"] * 4)


@pytest.mark.parametrize("ttl", [0, -1, MAX_INVITE_TTL + 1])
def test_ttl_bounds(home: Path, ttl: float) -> None:
    with pytest.raises(UsageError, match="expire within"):
        create_invite(SERVER, ports_spec="*=ro", ttl_seconds=ttl)


def test_store_is_private(home: Path) -> None:
    create_invite(SERVER, ports_spec="*=ro", ttl_seconds=60, now=NOW)
    path = home / "invites"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        create_invite(SERVER, ports_spec="*=ro", ttl_seconds=60, now=NOW)


def test_redeem_authorizes_the_client_once(home: Path) -> None:
    code = create_invite(SERVER, ports_spec="ttyUSB0=rw,ttyACM*=ro", ttl_seconds=900, now=NOW)
    assert _redeem(code) == "ttyUSB0=rw,ttyACM*=ro"
    clients = AuthorizedClients().load()
    entry = clients.find(CLIENT.public_id)
    assert entry is not None and entry.name == "alice"
    assert clients.rights(CLIENT.public_id, "ttyUSB0", NOW) == "rw"
    assert clients.rights(CLIENT.public_id, "ttyACM3", NOW) == "ro"
    assert clients.rights(CLIENT.public_id, "other", NOW) is None
    with pytest.raises(Refused, match="already used"):
        _redeem(code)
    (used,) = InviteStore().load().invites
    assert used.secret is None and used.used_by == CLIENT.public_id
    assert parse_invite(code).secret.hex() not in (home / "invites").read_text()


def test_expired_invite(home: Path) -> None:
    code = create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW)
    assert _redeem_refused(code, now=NOW + 900) == "invite expired at 2026-05-28T20:41:40Z"
    assert AuthorizedClients().load().entries == []


def _redeem_refused(code: str, *, now: float = NOW + 60, proof: bytes | None = None) -> str:
    with pytest.raises(Refused) as info:
        _redeem(code, now=now, proof=proof)
    return str(info.value)


def test_wrong_proof_does_not_spend_the_invite(home: Path) -> None:
    code = create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW)
    secret = parse_invite(code).secret
    other_h = hashlib.blake2b(b"handshake 2").digest()
    # A proof made for another session (a replayed or relayed MAC) is worthless here.
    assert "does not match" in _redeem_refused(code, proof=invite_proof(secret, other_h))
    assert "does not match" in _redeem_refused(code, proof=invite_proof(bytes(16), H))
    assert "does not match" in _redeem_refused(code, proof=b"")
    assert AuthorizedClients().load().entries == []
    assert _redeem(code) == "*=rw"


def test_unknown_invite(home: Path) -> None:
    create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW)
    with pytest.raises(Refused, match="unknown invite"):
        redeem_invite(bytes(8), bytes(32), H, CLIENT.public_id, now=NOW)


def test_redeem_checks_its_inputs_before_spending(home: Path) -> None:
    code = create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW)
    parsed = parse_invite(code)
    proof = invite_proof(parsed.secret, H)
    with pytest.raises(UsageError, match="32 bytes"):
        redeem_invite(parsed.invite_id, proof, H, b"short", now=NOW)
    assert _redeem(code) == "*=rw"


def _redeem_as(code: str, client: Identity, name: str | None) -> str | None:
    """Redeem for ``client`` suggesting ``name``; the name it got in authorized_clients."""
    parsed = parse_invite(code)
    proof = invite_proof(parsed.secret, H)
    redeem_invite(parsed.invite_id, proof, H, client.public_id, now=NOW + 1, client_name=name)
    entry = AuthorizedClients().load().find(client.public_id)
    assert entry is not None
    return entry.name


@pytest.mark.parametrize(
    ("suggested", "stored"),
    [
        ('"', None),  # nothing usable left: no name rather than a failed pairing
        ("\x1b[2Jbench\u202e", "[2Jbench"),
        ("my laptop", "my-laptop"),
        ("x" * 300, "x" * 64),
        (None, None),  # an older client sends no name
    ],
)
def test_the_name_a_client_suggests_is_cleaned(home: Path, suggested: str | None, stored: str | None) -> None:
    code = create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW)
    assert _redeem_as(code, CLIENT, suggested) == stored


def test_the_invite_name_wins_and_names_stay_unique(home: Path) -> None:
    # The server's choice is stored with the invite and may hold what a client's suggestion may not.
    named = create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW, name="bench pc")
    assert 'name="bench pc"' in (home / "invites").read_text()
    assert InviteStore().load().invites[0].name == "bench pc"
    assert _redeem_as(named, CLIENT, "alice") == "bench pc"
    # Another key suggesting a name already given gets it with a suffix, and pairs all the same.
    other, third = Identity(bytes([9]) * 32), Identity(bytes([10]) * 32)
    assert _redeem_as(_plain_invite(), other, "alice") == "alice"
    assert _redeem_as(_plain_invite(), third, "alice") == "alice-2"
    # A key pairing again keeps the name it has.
    assert _redeem_as(_plain_invite(), other, "alice") == "alice"
    with pytest.raises(UsageError, match="client name"):
        create_invite(SERVER, ports_spec="*=rw", ttl_seconds=900, now=NOW, name='a"b')


def _plain_invite() -> str:
    return create_invite(SERVER, ports_spec="*=ro", ttl_seconds=900, now=NOW)


def test_old_invites_are_pruned(home: Path) -> None:
    create_invite(SERVER, ports_spec="*=rw", ttl_seconds=60, now=NOW)
    create_invite(SERVER, ports_spec="*=rw", ttl_seconds=60, now=NOW + 3600)
    assert len(InviteStore().load().invites) == 2
    create_invite(SERVER, ports_spec="*=rw", ttl_seconds=60, now=NOW + 2 * 86400)
    assert len(InviteStore().load().invites) == 1


def test_invite_proof_definition() -> None:
    secret = bytes(range(16))
    expected = hashlib.blake2b(H, key=secret, person=b"ms-invite-v1", digest_size=32).digest()
    assert invite_proof(secret, H) == expected
    assert len(expected) == 32


def _code(payload: bytes, hrp: str = "msinv") -> str:
    return bech32.encode(hrp, payload)


HEAD = bytes([INVITE_VERSION]) + SERVER.public_id + bytes(8) + bytes(16)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (SERVER.id_string, "start with msinv1, not ms1"),
        ("msinv1qqqq", "not a valid invite code"),
        (_code(HEAD[:-1]), "truncated"),
        (_code(bytes([2]) + HEAD[1:]), "version 2 is not supported"),
        (_code(bytes([1]) + bytes(32) + HEAD[33:]), "valid server id"),
        (_code(HEAD + b"\x05ab"), "truncated address hint"),
        (_code(HEAD + b"\x03\xff\xfe\xfd"), "garbled address hint"),
        (_code(HEAD + b"\x03abc"), "address hint"),
    ],
)
def test_parse_invite_errors(code: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_invite(code)


def test_parse_invite_flipped_character() -> None:
    code = _code(HEAD)
    bad = code[:20] + ("q" if code[20] != "q" else "p") + code[21:]
    with pytest.raises(UsageError, match="checksum"):
        parse_invite(bad)
    assert parse_id(SERVER.id_string) == parse_invite(code).server_id


@given(st.binary(max_size=120))
def test_parse_invite_any_payload(payload: bytes) -> None:
    try:
        parse_invite(_code(payload))
    except UsageError:
        pass


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0011223344556677", "expected 'ID SECRET PERMS"),
        (
            "0011 00112233445566778899aabbccddeeff *=rw created=2026-01-01T00:00:00Z expires=2026-01-02",
            "wrong invite id or secret length",
        ),
        (
            "0011223344556677 zz *=rw created=2026-01-01T00:00:00Z expires=2026-01-02T00:00:00Z",
            "non-hexadecimal",
        ),
        ("0011223344556677 - *=rw created=2026-01-01T00:00:00Z", "required"),
        ("0011223344556677 - *=rw created=2026-01-01T00:00:00Z expires=soon", "Invalid isoformat"),
        (
            "0011223344556677 - *=rw created=2026-01-01T00:00:00Z expires=2026-01-02T00:00:00Z by=ms1x",
            "meshserial id",
        ),
        (
            "0011223344556677 - *=rw created=2026-01-01T00:00:00Z expires=2026-01-02T00:00:00Z x=1",
            "unknown option",
        ),
        (
            '0011223344556677 - *=rw created=2026-01-01T00:00:00Z expires=2026-01-02T00:00:00Z name="a\x01"',
            "name must be",
        ),
    ],
)
def test_malformed_store(home: Path, line: str, message: str) -> None:
    path = home / "invites"
    path.parent.mkdir(mode=0o700, parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"# c\n{line}\n".encode())
    os.close(fd)
    with pytest.raises(ConfigError, match=message) as info:
        InviteStore().load()
    assert f"{path}:2" in str(info.value)
