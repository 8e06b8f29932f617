"""The signed record envelope: exact bytes, round trips, every refusal, and a fuzz of the verifier."""

from __future__ import annotations

import base64
import json
from typing import Any

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserial.errors import ProtocolError, UsageError
from meshserial.proto import records
from meshserial.proto.records import PortInfo, PortState

from .conftest import T0, envelope

NOW = T0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def resign(key: nacl.signing.SigningKey, record: bytes, context: bytes = records.RECORD_CONTEXT) -> bytes:
    """An envelope around arbitrary record bytes, validly signed: reaches the checks after sigs."""
    sig = key.sign(context + record).signature
    return json.dumps({"record": b64(record), "sig": b64(sig)}).encode()


def record_dict(key: nacl.signing.SigningKey, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1,
        "id": b64(bytes(key.verify_key)),
        "seq": 7,
        "expires": int(NOW) + 60,
        "ports": [{"name": "gps", "device": "/dev/ttyUSB0", "state": "in-use"}],
        "addresses": ["192.0.2.1:7000", "[2001:db8::1]:7000"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_known_answer_vector() -> None:
    # Fixed seed and fields: other implementations can check their bytes against this envelope.
    key = nacl.signing.SigningKey(bytes(32))
    env = records.sign_record(
        key,
        seq=1,
        expires=1800003600,
        ports=[PortInfo(name="gps", device="/dev/ttyUSB0")],
        addresses=["192.0.2.1:7000"],
    )
    record = json.loads(env)["record"]
    assert records.b64url_decode(record) == (
        b'{"addresses":["192.0.2.1:7000"],"expires":1800003600,'
        b'"id":"O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik",'
        b'"ports":[{"device":"/dev/ttyUSB0","name":"gps","state":"free"}],"seq":1,"v":1}'
    )
    assert env == EXPECTED_VECTOR
    assert records.verify_envelope(env, now=1800000000).seq == 1


EXPECTED_VECTOR = (
    b'{"record":"eyJhZGRyZXNzZXMiOlsiMTkyLjAuMi4xOjcwMDAiXSwiZXhwaXJlcyI6MTgwMDAwMzYwMCwiaWQiOiJPMm9udk02MnBD'
    b"MWlvNmpRS204TmMyVXlGWGNkNGtPbU9zQklvWXRaMmlrIiwicG9ydHMiOlt7ImRldmljZSI6Ii9kZXYvdHR5VVNCMCIsIm5hbWUiOiJn"
    b'cHMiLCJzdGF0ZSI6ImZyZWUifV0sInNlcSI6MSwidiI6MX0","sig":"CnVArKhGVpp6xj_tmveqwAdH4pv0UykHlxAzQTOmUBS_eshw'
    b'E-XdHb5FV978O-gdyqBslnh3fPPHok9wnF_sBA"}'
)


def test_round_trip_bytes_and_dict(key: nacl.signing.SigningKey) -> None:
    env = envelope(key, seq=5, names=("gps", "uart 2"), addresses=("10.0.0.5:7000", "[fd00::5]:7000"))
    rec = records.verify_envelope(env, now=NOW)
    assert rec.server_id == bytes(key.verify_key)
    assert rec.seq == 5
    assert rec.names == {"gps", "uart 2"}
    assert rec.addresses == ("10.0.0.5:7000", "[fd00::5]:7000")
    assert rec.envelope == env
    assert rec.id_b64 == b64(bytes(key.verify_key))
    assert records.verify_envelope(json.loads(env), now=NOW) == rec
    # Whitespace around the envelope is not part of what is signed: the compact form is returned.
    spaced = json.dumps(json.loads(env), indent=2).encode()
    assert records.verify_envelope(spaced, now=NOW).envelope == env


def test_signature_covers_context_and_exact_bytes(key: nacl.signing.SigningKey) -> None:
    env = json.loads(envelope(key))
    record = records.b64url_decode(env["record"])
    sig = records.b64url_decode(env["sig"])
    key.verify_key.verify(records.RECORD_CONTEXT + record, sig)
    with pytest.raises(records.BadSignature):  # a delete-context signature is not a record signature
        records.verify_envelope(resign(key, record, records.DELETE_CONTEXT), now=NOW)


def test_non_ascii_names_are_escaped_canonically(key: nacl.signing.SigningKey) -> None:
    rec = records.verify_envelope(envelope(key, names=("Gerät",)), now=NOW)
    assert rec.names == {"Gerät"}


def test_forged_signature(key: nacl.signing.SigningKey) -> None:
    other = nacl.signing.SigningKey(bytes(range(1, 33)))
    record = json.dumps(record_dict(key), sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(records.BadSignature) as info:
        records.verify_envelope(resign(other, record), now=NOW)
    assert info.value.reason == "bad signature"
    assert isinstance(info.value, ProtocolError)
    tampered = record.replace(b"7000", b"7001")
    env = json.loads(envelope(key))
    env["record"] = b64(tampered)
    with pytest.raises(records.BadSignature):
        records.verify_envelope(env, now=NOW)


@pytest.mark.parametrize(
    ("changes", "error", "reason"),
    [
        ({"expires": int(NOW)}, records.RecordExpired, "record expired"),
        ({"expires": int(NOW) - 1}, records.RecordExpired, "record expired"),
        ({"expires": int(NOW) + 86401}, records.ExpiryTooFar, "expiry too far ahead"),
        ({"v": 2}, records.MalformedRecord, "unsupported record version"),
        ({"v": True}, records.MalformedRecord, "unsupported record version"),
        ({"seq": True}, records.MalformedRecord, "seq must be an integer"),
        ({"seq": -1}, records.MalformedRecord, "seq out of range"),
        ({"seq": 2**63}, records.MalformedRecord, "seq out of range"),
        ({"seq": "1"}, records.MalformedRecord, "seq must be an integer"),
        ({"expires": 1.5}, records.MalformedRecord, "expires must be an integer"),
        ({"ports": {}}, records.MalformedRecord, "ports must be a list"),
        ({"ports": [1]}, records.MalformedRecord, "port must be an object"),
        (
            {"ports": [{"name": "", "device": "d", "state": "free"}]},
            records.MalformedRecord,
            "invalid port name",
        ),
        (
            {"ports": [{"name": "a\nb", "device": "d", "state": "free"}]},
            records.MalformedRecord,
            "invalid port name",
        ),
        (
            {"ports": [{"name": "a", "device": "d\x00", "state": "free"}]},
            records.MalformedRecord,
            "invalid port device",
        ),
        (
            {"ports": [{"name": "a", "device": "d", "state": "busy"}]},
            records.MalformedRecord,
            "invalid port state",
        ),
        ({"ports": [{"name": "a", "device": "d"}]}, records.MalformedRecord, "state must be a string"),
        (
            {"ports": [{"name": "a", "device": "d", "state": "free"}] * 2},
            records.MalformedRecord,
            "duplicate port name",
        ),
        ({"addresses": "1.2.3.4:5"}, records.MalformedRecord, "addresses must be a list"),
        (
            {"ports": [{"name": str(i), "device": "", "state": "free"} for i in range(33)]},
            records.MalformedRecord,
            "too many ports",
        ),
        ({"addresses": ["1.2.3.4:5"] * 17}, records.MalformedRecord, "too many addresses"),
        ({"id": "ab+c"}, records.MalformedRecord, "invalid base64url"),
        ({"id": b64(b"x" * 31)}, records.MalformedRecord, "id is not a 32-byte key"),
        ({"id": None}, records.MalformedRecord, "id must be a string"),
    ],
)
def test_refusals(
    key: nacl.signing.SigningKey, changes: dict[str, Any], error: type[records.RecordError], reason: str
) -> None:
    raw = json.dumps(record_dict(key, **changes), sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(error) as info:
        records.verify_envelope(resign(key, raw), now=NOW)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "address",
    [
        "1.2.3.4",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4:07000",
        "host.example:7000",
        "[1.2.3.4]:7000",
        "::1:7000",
        "[::]:7000",
        "0.0.0.0:7000",
        "224.0.0.251:5353",
        "1.2.3.4:+80",
        "1.2.3.4:٣",
        7,
    ],
)
def test_bad_addresses(key: nacl.signing.SigningKey, address: object) -> None:
    raw = json.dumps(record_dict(key, addresses=[address]), sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(records.MalformedRecord, match="invalid address"):
        records.verify_envelope(resign(key, raw), now=NOW)


def test_unknown_keys_are_ignored(key: nacl.signing.SigningKey) -> None:
    raw = json.dumps(record_dict(key, future={"x": [1]}), sort_keys=True, separators=(",", ":")).encode()
    assert records.verify_envelope(resign(key, raw), now=NOW).seq == 7


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw.replace(b",", b", ", 1),  # whitespace
        lambda raw: b'{"v":1,' + raw[1:],  # duplicate key
        lambda raw: raw.replace(b'"seq":7', b'"seq":7.0'),
        lambda raw: raw.replace(b'"seq":7', b'"seq":NaN'),
        lambda raw: raw.replace(b'"seq":7', b'"seq":7,"x":1e400'),  # parses as inf: cannot be re-serialized
        lambda raw: raw.replace(b'"gps"', b'"\\u0067ps"'),  # escaped ASCII: a second spelling
        lambda raw: b"[" + raw + b"]",
        lambda raw: raw[:-1],
        lambda raw: b"\xff" + raw,
        lambda raw: b"[" * 1400 + b"]" * 1400,  # deeper than the recursion limit
    ],
)
def test_non_canonical_or_broken_json_is_malformed(key: nacl.signing.SigningKey, mangle: Any) -> None:
    raw = json.dumps(record_dict(key), sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(records.MalformedRecord):
        records.verify_envelope(resign(key, mangle(raw)), now=NOW)


@pytest.mark.parametrize(
    "env",
    [
        b"",
        b"null",
        b"[]",
        b'{"record":"AA"}',
        b'{"record":"AA","sig":"AA","x":1}',
        b'{"record":1,"sig":"AA"}',
        b'{"record":"AA==","sig":"AA"}',
        b'{"record":"A+/A","sig":"AA"}',
        b'{"record":"AB","sig":"AA"}',  # non-zero padding bits
        b'{"record":"A","sig":"AA"}',
        b'{"record":"AA","sig":"AA"}',  # short signature
        b"{" * 4000,
    ],
)
def test_malformed_envelopes(env: bytes) -> None:
    with pytest.raises(records.MalformedRecord):
        records.verify_envelope(env, now=NOW)


def test_too_large(key: nacl.signing.SigningKey) -> None:
    env = envelope(key)
    with pytest.raises(records.RecordTooLarge):
        records.verify_envelope(env + b" " * (4097 - len(env)), now=NOW)
    big = {"record": "A" * 4096, "sig": "A"}
    with pytest.raises(records.RecordTooLarge):
        records.verify_envelope(big, now=NOW)


def test_sign_record_refuses_what_verify_would_refuse(key: nacl.signing.SigningKey) -> None:
    port = PortInfo(name="p", device="/dev/x")
    with pytest.raises(UsageError):
        records.sign_record(key, seq=-1, expires=1, ports=[port], addresses=[])
    with pytest.raises(UsageError):
        records.sign_record(key, seq=1, expires=1.5, ports=[port], addresses=[])  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        records.sign_record(key, seq=1, expires=1, ports=[port, port], addresses=[])
    with pytest.raises(UsageError):
        records.sign_record(key, seq=1, expires=1, ports=[port], addresses=["localhost:1"])
    many = [PortInfo(name=f"port-{i:02}", device="/dev/serial/by-id/" + "x" * 100) for i in range(30)]
    with pytest.raises(UsageError, match="too large"):
        records.sign_record(key, seq=1, expires=1, ports=many, addresses=[])


def test_port_states_round_trip(key: nacl.signing.SigningKey) -> None:
    ports = [PortInfo(name=s.value, device="/dev/x", state=s) for s in PortState]
    env = records.sign_record(key, seq=1, expires=int(NOW) + 10, ports=ports, addresses=[])
    assert records.verify_envelope(env, now=NOW).ports == tuple(ports)


def test_delete_round_trip_and_refusals(key: nacl.signing.SigningKey) -> None:
    req = records.sign_delete(key, seq=9, ts=int(NOW))
    assert records.verify_delete(req, now=NOW + 299) == records.DeleteRequest(
        server_id=bytes(key.verify_key), seq=9, ts=int(NOW)
    )
    with pytest.raises(records.RecordExpired):
        records.verify_delete(req, now=NOW + 301)
    with pytest.raises(records.ExpiryTooFar):
        records.verify_delete(req, now=NOW - 301)
    body = records.b64url_decode(json.loads(req)["delete"])
    forged = {"delete": b64(body), "sig": b64(nacl.signing.SigningKey(bytes(32)).sign(body).signature)}
    with pytest.raises(records.BadSignature):
        records.verify_delete(forged, now=NOW)
    # A record envelope is not a delete request, and a record-context signature does not delete.
    with pytest.raises(records.MalformedRecord):
        records.verify_delete(envelope(key), now=NOW)
    wrong_ctx = {"delete": b64(body), "sig": b64(key.sign(records.RECORD_CONTEXT + body).signature)}
    with pytest.raises(records.BadSignature):
        records.verify_delete(wrong_ctx, now=NOW)
    with pytest.raises(UsageError):
        records.sign_delete(key, seq=-1, ts=0)


# --- fuzz -------------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000))
def test_fuzz_any_bytes_is_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        records.verify_envelope(data, now=NOW)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["record", "sig", "x"]), _json | st.text(alphabet="AQw-_=+/", max_size=90)
    )
)
def test_fuzz_any_envelope_object_is_protocol_error(obj: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        records.verify_envelope(obj, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_envelope(data: st.DataObject) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    env = bytearray(envelope(key))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(env) - 1))
        env[index] = data.draw(st.integers(0, 255))
    try:
        rec = records.verify_envelope(bytes(env), now=NOW)
    except ProtocolError:
        return
    assert rec.envelope == envelope(key)  # only a no-op mutation may still verify


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_signed_garbage_records(payload: bytes) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    with pytest.raises(ProtocolError):
        records.verify_envelope(resign(key, payload), now=NOW)
    with pytest.raises(ProtocolError):
        records.verify_delete(resign(key, payload, records.DELETE_CONTEXT), now=NOW)
