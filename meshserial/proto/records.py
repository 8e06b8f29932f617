"""Signed rendezvous records: exact bytes, signing and verification (sans-IO).

Theory of operation
-------------------
A server describes where it can be reached in a *record*, a JSON object serialized canonically (keys sorted,
no whitespace, ASCII only)::

    {"addresses":["10.0.0.5:7000"],"expires":1732703600,"id":"<b64url pubkey>",
     "ports":[{"device":"/dev/ttyUSB0","name":"gps","state":"free"}],"seq":1732700000123,"v":1}

and signs those exact bytes with its Ed25519 identity key.  What travels is an *envelope*::

    {"record":"<b64url(record bytes)>","sig":"<b64url(Ed25519(b'meshserial-record-v1:' + record bytes))>"}

Because the signature covers bytes rather than a parsed object, nobody has to agree on a JSON canonical form
to verify; we still *require* the canonical form so that one record has exactly one byte string (no duplicate
keys, no alternative spellings).  Unknown keys inside the record are ignored so that version 1 can grow
optional fields; an incompatible change bumps ``v``.  ``seq`` only ever grows for one identity (the rendezvous
refuses rollback), ``expires`` is absolute Unix time and may not be further ahead than ``max_ttl``.

A signed *delete* request withdraws a record and uses the same shape with its own domain-separation prefix::

    {"delete":"<b64url({"id":…,"seq":N,"ts":unix_seconds})>",
     "sig":"<b64url(Ed25519(b'meshserial-delete-v1:' + delete bytes))>"}

A delete is replay-protected twice: ``ts`` must be within ``max_skew`` of the verifier's clock, and the
rendezvous only honours it when ``seq`` is not older than the stored record (then keeps ``seq`` as a
tombstone).

All base64 is RFC 4648 §5 base64url without padding, and decoding is strict (one spelling per byte string).
The identity ``id`` is the raw 32-byte Ed25519 public key; humans see it as ``ms1…`` elsewhere.

Nothing here reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from meshserial.errors import ProtocolError, UsageError

RECORD_CONTEXT = b"meshserial-record-v1:"
DELETE_CONTEXT = b"meshserial-delete-v1:"
VERSION = 1
MAX_ENVELOPE_SIZE = 4096
DEFAULT_MAX_TTL = 86400
DEFAULT_MAX_SKEW = 300
MAX_PORTS = 32
MAX_ADDRESSES = 16
MAX_NAME_LEN = 64
MAX_DEVICE_LEN = 256
MAX_SEQ = 2**63 - 1  # fits a signed SQLite INTEGER
KEY_SIZE = 32
SIG_SIZE = 64

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# Port names are what users type ("gps", "bench-1/uart0"); no control characters, no newlines.
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1," + str(MAX_NAME_LEN) + "}")


# --- errors ---------------------------------------------------------------------------------------


class RecordError(ProtocolError):
    """A rendezvous record or request is not acceptable."""

    code = "malformed"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedRecord(RecordError):
    """A rendezvous record or request is not well-formed."""

    code = "malformed"


class RecordTooLarge(RecordError):
    """A rendezvous envelope is larger than the protocol allows."""

    code = "too-large"


class BadSignature(RecordError):
    """A rendezvous record's signature does not verify against the key it names."""

    code = "bad-signature"


class RecordExpired(RecordError):
    """A rendezvous record has expired (or a delete request is too old)."""

    code = "expired"


class ExpiryTooFar(RecordError):
    """A rendezvous record claims to stay valid longer than allowed (or a request is dated in the future)."""

    code = "expiry-too-far"


# --- data -----------------------------------------------------------------------------------------


class PortState(enum.Enum):
    FREE = "free"
    IN_USE = "in-use"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True, kw_only=True)
class PortInfo:
    """One shared port as a record lists it."""

    name: str
    device: str
    state: PortState = PortState.FREE


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """A verified record.  ``envelope`` is the compact envelope JSON carrying the signed bytes untouched."""

    server_id: bytes
    seq: int
    expires: int
    ports: tuple[PortInfo, ...]
    addresses: tuple[str, ...]
    envelope: bytes

    @property
    def id_b64(self) -> str:
        """The server identity in the wire (base64url) form."""
        return b64url_encode(self.server_id)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(port.name for port in self.ports)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRequest:
    """A verified, fresh request to withdraw the records of ``server_id`` up to ``seq``."""

    server_id: bytes
    seq: int
    ts: int


# --- base64url ------------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """RFC 4648 §5 base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`; raises :class:`MalformedRecord`."""
    if not isinstance(text, str) or _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        raise MalformedRecord("invalid base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the checks above exclude it
        raise MalformedRecord("invalid base64url") from exc
    if b64url_encode(data) != text:  # non-zero padding bits: a second spelling of the same bytes
        raise MalformedRecord("invalid base64url")
    return data


def parse_server_id(text: str) -> bytes:
    """Decode a base64url server identity (32 bytes); raises :class:`MalformedRecord`."""
    raw = b64url_decode(text)
    if len(raw) != KEY_SIZE:
        raise MalformedRecord("id is not a 32-byte key")
    return raw


# --- canonical JSON -------------------------------------------------------------------------------


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, ASCII only: the one spelling we sign."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _reject_constant(name: str) -> object:
    raise MalformedRecord(f"invalid JSON constant {name}")


def _loads(data: bytes) -> object:
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecordError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedRecord("invalid JSON") from exc


def _int_field(obj: Mapping[str, object], key: str, lo: int, hi: int) -> int:
    value = obj.get(key)
    if type(value) is not int:  # bool is an int subclass: refuse it
        raise MalformedRecord(f"{key} must be an integer")
    if not lo <= value <= hi:
        raise MalformedRecord(f"{key} out of range")
    return value


def _str_field(obj: Mapping[str, object], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedRecord(f"{key} must be a string")
    return value


# --- field validation (shared by signer and verifier) ---------------------------------------------


def check_address(address: str) -> str:
    """Accept ``IPv4:port`` or ``[IPv6]:port`` (IP literals only); raises :class:`MalformedRecord`."""
    if not isinstance(address, str) or len(address) > 64:
        raise MalformedRecord("invalid address")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536 or port[0] == "0":
        raise MalformedRecord("invalid address")
    try:
        if host.startswith("[") and host.endswith("]"):
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(host[1:-1])
        else:
            ip = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise MalformedRecord("invalid address") from exc
    if ip.is_unspecified or ip.is_multicast:
        raise MalformedRecord("invalid address")
    return address


def _check_port(obj: object) -> PortInfo:
    if not isinstance(obj, dict):
        raise MalformedRecord("port must be an object")
    name = _str_field(obj, "name")
    if _NAME.fullmatch(name) is None:
        raise MalformedRecord("invalid port name")
    device = _str_field(obj, "device")
    if len(device) > MAX_DEVICE_LEN or re.search(r"[\x00-\x1f\x7f]", device):
        raise MalformedRecord("invalid port device")
    try:
        state = PortState(_str_field(obj, "state"))
    except ValueError as exc:
        raise MalformedRecord("invalid port state") from exc
    return PortInfo(name=name, device=device, state=state)


def _check_ports(value: object) -> tuple[PortInfo, ...]:
    if not isinstance(value, list):
        raise MalformedRecord("ports must be a list")
    if len(value) > MAX_PORTS:
        raise MalformedRecord("too many ports")
    ports = tuple(_check_port(item) for item in value)
    if len({port.name for port in ports}) != len(ports):
        raise MalformedRecord("duplicate port name")
    return ports


def _check_addresses(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MalformedRecord("addresses must be a list")
    if len(value) > MAX_ADDRESSES:
        raise MalformedRecord("too many addresses")
    return tuple(check_address(item) for item in value)


def _check_expiry(expires: int, now: float, max_ttl: float) -> None:
    if expires <= now:
        raise RecordExpired("record expired")
    if expires > now + max_ttl:
        raise ExpiryTooFar("expiry too far ahead")


# --- signing --------------------------------------------------------------------------------------


def _port_json(port: PortInfo) -> dict[str, str]:
    return {"name": port.name, "device": port.device, "state": port.state.value}


def sign_record(
    signing_key: nacl.signing.SigningKey,
    *,
    seq: int,
    expires: int,
    ports: Iterable[PortInfo],
    addresses: Iterable[str],
) -> bytes:
    """Build and sign a record; return the envelope JSON bytes.

    Raises :class:`~meshserial.errors.UsageError` if the arguments would make a record that
    :func:`verify_envelope` refuses (bad field, too many ports, envelope over 4096 bytes).
    """
    port_list = list(ports)
    address_list = list(addresses)
    server_id = bytes(signing_key.verify_key)
    body: dict[str, Any] = {
        "v": VERSION,
        "id": b64url_encode(server_id),
        "seq": seq,
        "expires": expires,
        "ports": [_port_json(port) for port in port_list],
        "addresses": address_list,
    }
    try:
        if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
            raise MalformedRecord("seq out of range")
        if type(expires) is not int or not 0 <= expires <= MAX_SEQ:
            raise MalformedRecord("expires out of range")
        _check_ports(body["ports"])
        _check_addresses(address_list)
        record = canonical_json(body)
    except (RecordError, TypeError, ValueError) as exc:
        raise UsageError(f"cannot sign rendezvous record: {exc}") from exc
    envelope = _make_envelope("record", record, signing_key.sign(RECORD_CONTEXT + record).signature)
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise UsageError(f"rendezvous record too large ({len(envelope)} > {MAX_ENVELOPE_SIZE} bytes)")
    return envelope


def sign_delete(signing_key: nacl.signing.SigningKey, *, seq: int, ts: int) -> bytes:
    """Build a signed delete request for every record of this identity with ``seq`` or older."""
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ or type(ts) is not int or not 0 <= ts <= MAX_SEQ:
        raise UsageError("cannot sign rendezvous delete: seq/ts out of range")
    body = canonical_json({"id": b64url_encode(bytes(signing_key.verify_key)), "seq": seq, "ts": ts})
    return _make_envelope("delete", body, signing_key.sign(DELETE_CONTEXT + body).signature)


def _make_envelope(key: str, payload: bytes, signature: bytes) -> bytes:
    return canonical_json({key: b64url_encode(payload), "sig": b64url_encode(signature)})


# --- verification ---------------------------------------------------------------------------------


def _open_envelope(envelope: bytes | Mapping[str, object], key: str) -> tuple[bytes, bytes]:
    """Return (payload bytes, signature) from an envelope given as JSON bytes or an already parsed object."""
    if isinstance(envelope, bytes | bytearray | memoryview):
        if len(envelope) > MAX_ENVELOPE_SIZE:
            raise RecordTooLarge(f"envelope larger than {MAX_ENVELOPE_SIZE} bytes")
        obj = _loads(bytes(envelope))
    else:
        obj = envelope
    if not isinstance(obj, Mapping):
        raise MalformedRecord("envelope must be a JSON object")
    if set(obj) != {key, "sig"}:
        raise MalformedRecord(f"envelope must have exactly the keys {key!r} and 'sig'")
    payload_text, sig_text = obj[key], obj["sig"]
    if not isinstance(payload_text, str) or not isinstance(sig_text, str):
        raise MalformedRecord("envelope fields must be strings")
    # Bound the work before decoding: we measure the compact envelope, whatever the input form.
    if len(payload_text) + len(sig_text) + len(key) + 16 > MAX_ENVELOPE_SIZE:
        raise RecordTooLarge(f"envelope larger than {MAX_ENVELOPE_SIZE} bytes")
    payload = b64url_decode(payload_text)
    signature = b64url_decode(sig_text)
    if len(signature) != SIG_SIZE:
        raise MalformedRecord("signature is not 64 bytes")
    return payload, signature


def _parse_signed(payload: bytes, signature: bytes, context: bytes) -> tuple[dict[str, Any], bytes]:
    """Parse the signed JSON object, check it is canonical and that its ``id`` signed it."""
    obj = _loads(payload)
    if not isinstance(obj, dict):
        raise MalformedRecord("signed payload must be a JSON object")
    try:
        canonical = canonical_json(obj)
    except (ValueError, RecursionError) as exc:
        raise MalformedRecord("invalid JSON") from exc
    if canonical != payload:
        raise MalformedRecord("signed payload is not canonical JSON")
    server_id = parse_server_id(_str_field(obj, "id"))
    try:
        nacl.signing.VerifyKey(server_id).verify(context + payload, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise BadSignature("bad signature") from exc
    return obj, server_id


def verify_envelope(
    envelope: bytes | Mapping[str, object], *, now: float, max_ttl: float = DEFAULT_MAX_TTL
) -> Record:
    """Verify a record envelope and return the record.

    Checks size (≤ 4096 bytes), shape, signature, and that ``now < expires ≤ now + max_ttl``.  Raises a
    :class:`RecordError` (a :class:`~meshserial.errors.ProtocolError`) whose ``reason`` says why.
    """
    payload, signature = _open_envelope(envelope, "record")
    obj, server_id = _parse_signed(payload, signature, RECORD_CONTEXT)
    if obj.get("v") != VERSION or type(obj.get("v")) is not int:
        raise MalformedRecord("unsupported record version")
    seq = _int_field(obj, "seq", 0, MAX_SEQ)
    expires = _int_field(obj, "expires", 0, MAX_SEQ)
    ports = _check_ports(obj.get("ports"))
    addresses = _check_addresses(obj.get("addresses"))
    _check_expiry(expires, now, max_ttl)
    # _open_envelope bounded the compact form to MAX_ENVELOPE_SIZE already.
    compact = _make_envelope("record", payload, signature)
    return Record(
        server_id=server_id, seq=seq, expires=expires, ports=ports, addresses=addresses, envelope=compact
    )


def verify_delete(
    request: bytes | Mapping[str, object], *, now: float, max_skew: float = DEFAULT_MAX_SKEW
) -> DeleteRequest:
    """Verify a signed delete request whose ``ts`` is within ``max_skew`` seconds of ``now``."""
    payload, signature = _open_envelope(request, "delete")
    obj, server_id = _parse_signed(payload, signature, DELETE_CONTEXT)
    seq = _int_field(obj, "seq", 0, MAX_SEQ)
    ts = _int_field(obj, "ts", 0, MAX_SEQ)
    if ts < now - max_skew:
        raise RecordExpired("delete request too old")
    if ts > now + max_skew:
        raise ExpiryTooFar("delete request dated in the future")
    return DeleteRequest(server_id=server_id, seq=seq, ts=ts)
