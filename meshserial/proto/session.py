"""The session control vocabulary carried in CTRL records of the secure channel.

Every CTRL record holds one compact JSON object with a ``t`` (type) key. The client speaks first, right
after the handshake; the server answers each request once:

====================  =========  ===============================================================
``t``                 direction  keys
====================  =========  ===============================================================
``hello``             C → S      ``v`` protocol version (1), ``port`` port name, ``mode`` ``rw``/``ro``,
                                 ``session`` (hex id to resume, or null), ``rx``/``tx`` stream offsets
                                 acknowledged so far (0 for a new session), ``takeover`` (bool),
                                 ``scrollback`` seconds of recent device output to replay first,
                                 ``features`` what the client understands beyond this table (a list
                                 of words, at most 16; today ``device``; optional)
``redeem``            C → S      ``invite`` invite id (hex), ``proof`` (hex, see docs/security.md),
                                 ``name`` the name the client suggests for itself, e.g. its host name
                                 (optional, may be null; the server cleans it, prefers a name set with
                                 ``invite --name`` and makes it unique; older servers ignore it)
``accept``            S → C      ``port``, ``mode``, ``session`` (hex id), ``rx``/``tx`` offsets the server
                                 resumes from, ``lost`` bytes the client can no longer get,
                                 ``holder``: who holds the port if it is not us (or null),
                                 ``device``: whether the device is there now (optional, default true)
``deny``              S → C      ``reason`` (one human line); the server closes after it. Also sent
                                 when the server ends a running session (revoked, expired, replaced)
``device``            S → C      ``present`` (bool): the device was unplugged or is back; only to a
                                 client whose ``hello`` listed the ``device`` feature
``paired``            S → C      ``ports`` (the rights granted by the invite)
``ack``               both       ``offset``: bytes of the peer's stream received so far
``goaway``            S → C      ``reason``; the server is stopping and CLOSE follows: reconnect later
====================  =========  ===============================================================

Offsets and session ids are the room left for resuming a session after a network drop: a later client
sends the id and offsets it has, and the server replays from there. Unknown keys are ignored (new
optional fields may be added); unknown types are an error of the peer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshserial.errors import ProtocolError

VERSION = 1
MAX_CONTROL = 4096
MODES = ("rw", "ro")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    port: str
    mode: str = "rw"
    session: str | None = None
    rx: int = 0
    tx: int = 0
    takeover: bool = False
    scrollback: float = 0.0
    features: tuple[str, ...] = ()
    v: int = VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class Redeem:
    invite: str
    proof: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    port: str
    mode: str
    session: str
    rx: int = 0
    tx: int = 0
    lost: int = 0
    holder: str | None = None
    device: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class Deny:
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Paired:
    ports: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAway:
    """The server is going away (shutting down or restarting); the client should reconnect."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState:
    """The shared device went away (unplugged) or came back."""

    present: bool


#: The features a client may list in ``hello``.
DEVICE_FEATURE = "device"
MAX_FEATURES = 16

Message = Hello | Redeem | Accept | Deny | Paired | Ack | GoAway | DeviceState

_TYPES: dict[str, type[Message]] = {
    "hello": Hello,
    "redeem": Redeem,
    "accept": Accept,
    "deny": Deny,
    "paired": Paired,
    "ack": Ack,
    "goaway": GoAway,
    "device": DeviceState,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode(message: Message) -> bytes:
    body: dict[str, Any] = {"t": _NAMES[type(message)]}
    for name in message.__dataclass_fields__:
        body[name] = getattr(message, name)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in obj:
        if default is ...:
            raise ProtocolError(f"control message without {name!r}")
        return default
    value = obj[name]
    if isinstance(value, bool) and kind is int:
        raise ProtocolError(f"control field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise ProtocolError(f"control field {name!r} has the wrong type")
    return value


def decode(data: bytes) -> Message:
    """Parse one CTRL record; raise :class:`ProtocolError` for anything malformed."""
    if len(data) > MAX_CONTROL:
        raise ProtocolError("control message too large")
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: 4 KiB of "[" nests deeper than the parser will go; a peer's bytes must
        # never raise anything but ProtocolError.
        raise ProtocolError("control message is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("control message is not a JSON object")
    kind = obj.get("t")
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ProtocolError(f"unknown control message type {str(kind)[:20]!r}")
    match kind:
        case "hello":
            mode = _field(obj, "mode", str, "rw")
            if mode not in MODES:
                raise ProtocolError("hello with an unknown mode")
            msg: Message = Hello(
                port=_field(obj, "port", str),
                mode=mode,
                session=_field(obj, "session", (str, type(None)), None),
                rx=_offset(_field(obj, "rx", int, 0)),
                tx=_offset(_field(obj, "tx", int, 0)),
                takeover=_field(obj, "takeover", bool, False),
                scrollback=_seconds(_field(obj, "scrollback", (int, float), 0.0)),
                features=_features(_field(obj, "features", list, [])),
                v=_field(obj, "v", int, VERSION),
            )
        case "redeem":
            msg = Redeem(
                invite=_field(obj, "invite", str),
                proof=_field(obj, "proof", str),
                name=_field(obj, "name", (str, type(None)), None),
            )
        case "accept":
            msg = Accept(
                port=_field(obj, "port", str),
                mode=_field(obj, "mode", str),
                session=_field(obj, "session", str),
                rx=_offset(_field(obj, "rx", int, 0)),
                tx=_offset(_field(obj, "tx", int, 0)),
                holder=_field(obj, "holder", (str, type(None)), None),
                lost=_offset(_field(obj, "lost", int, 0)),
                device=_field(obj, "device", bool, True),
            )
        case "deny":
            msg = Deny(reason=_field(obj, "reason", str)[:300])
        case "paired":
            msg = Paired(ports=_field(obj, "ports", str))
        case "goaway":
            msg = GoAway(reason=_field(obj, "reason", str)[:300])
        case "device":
            msg = DeviceState(present=_field(obj, "present", bool))
        case _:
            msg = Ack(offset=_offset(_field(obj, "offset", int)))
    return msg


def _features(value: list[Any]) -> tuple[str, ...]:
    if len(value) > MAX_FEATURES or not all(isinstance(x, str) and 0 < len(x) <= 32 for x in value):
        raise ProtocolError("hello with malformed features")
    return tuple(value)


def _seconds(value: float) -> float:
    if isinstance(value, bool) or not 0 <= value <= 86400:
        raise ProtocolError("scrollback out of range")
    return float(value)


def _offset(value: int) -> int:
    if not 0 <= value < 2**63:
        raise ProtocolError("stream offset out of range")
    return value
