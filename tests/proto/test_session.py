"""Session control messages: every type round-trips; malformed fields are protocol errors."""

from __future__ import annotations

import json

import pytest

from meshserial.errors import ProtocolError
from meshserial.proto import session as sess

MESSAGES: list[sess.Message] = [
    sess.Hello(
        port="gps",
        mode="ro",
        session="ab" * 16,
        rx=5,
        tx=7,
        takeover=True,
        scrollback=2.5,
        features=(sess.DEVICE_FEATURE,),
    ),
    sess.Redeem(invite="00" * 8, proof="11" * 32, name="desk"),
    sess.Accept(port="gps", mode="rw", session="cd" * 16, rx=1, tx=2, lost=3, holder="alice", device=False),
    sess.Deny(reason="access revoked"),
    sess.Paired(ports="*=rw"),
    sess.Ack(offset=123),
    sess.GoAway(reason="restarting"),
    sess.DeviceState(present=False),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: sess.Message) -> None:
    assert sess.decode(sess.encode(message)) == message


def test_optional_fields_have_old_defaults() -> None:
    hello = sess.decode(b'{"t":"hello","port":"gps"}')
    assert hello == sess.Hello(port="gps")
    accept = sess.decode(b'{"t":"accept","port":"gps","mode":"rw","session":"x"}')
    assert isinstance(accept, sess.Accept) and accept.device is True


@pytest.mark.parametrize(
    "body",
    [
        {"t": "hello", "port": "gps", "features": "device"},
        {"t": "hello", "port": "gps", "features": [1]},
        {"t": "hello", "port": "gps", "features": [""]},
        {"t": "hello", "port": "gps", "features": ["x" * 33]},
        {"t": "hello", "port": "gps", "features": ["f"] * 17},
        {"t": "device"},
        {"t": "device", "present": 1},
        {"t": "accept", "port": "gps", "mode": "rw", "session": "x", "device": "yes"},
    ],
)
def test_malformed_fields_are_protocol_errors(body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        sess.decode(json.dumps(body).encode())
