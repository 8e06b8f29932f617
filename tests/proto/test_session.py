"""Session control messages: every type round-trips; malformed fields are protocol errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"t":"ack","offset":1}' + b" " * sess.MAX_CONTROL, "too large"),
        (b"{", "not JSON"),
        (b'{"t":"deny","reason":"\xff"}', "not JSON"),  # not UTF-8
        (b'["t","ack"]', "not a JSON object"),
        (b"{}", "unknown control message type 'None'"),
        (b'{"t":"nope"}', "unknown control message type 'nope'"),
        (b'{"t":["hello"]}', "unknown control message type"),
        (b'{"t":"hello","port":"gps","mode":"wo"}', "unknown mode"),
        (b'{"t":"hello"}', "without 'port'"),
        (b'{"t":"hello","port":7}', "'port' has the wrong type"),
        (b'{"t":"hello","port":"gps","rx":true}', "'rx' has the wrong type"),  # bool is not an offset
        (b'{"t":"hello","port":"gps","rx":-1}', "offset out of range"),
        (b'{"t":"hello","port":"gps","tx":9223372036854775808}', "offset out of range"),
        (b'{"t":"hello","port":"gps","takeover":1}', "'takeover' has the wrong type"),
        (b'{"t":"hello","port":"gps","scrollback":true}', "scrollback out of range"),
        (b'{"t":"hello","port":"gps","scrollback":-0.5}', "scrollback out of range"),
        (b'{"t":"hello","port":"gps","scrollback":86401}', "scrollback out of range"),
        (b'{"t":"hello","port":"gps","scrollback":NaN}', "scrollback out of range"),
        (b'{"t":"hello","port":"gps","v":"1"}', "'v' has the wrong type"),
        (b'{"t":"hello","port":"gps","session":5}', "'session' has the wrong type"),
        (b'{"t":"accept","port":"gps","mode":"rw"}', "without 'session'"),
        (b'{"t":"accept","port":"gps","mode":"rw","session":"s","lost":-1}', "offset out of range"),
        (b'{"t":"ack"}', "without 'offset'"),
        (b'{"t":"ack","offset":1.0}', "'offset' has the wrong type"),
        (b'{"t":"ack","offset":false}', "'offset' has the wrong type"),
        (b'{"t":"deny"}', "without 'reason'"),
        (b'{"t":"goaway","reason":null}', "'reason' has the wrong type"),
        (b'{"t":"paired","ports":["gps"]}', "'ports' has the wrong type"),
    ],
)
def test_malformed_messages_say_why(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        sess.decode(data)


def test_boundaries_that_are_accepted() -> None:
    limit = b'{"t":"ack","offset":9223372036854775807}'
    assert sess.decode(limit.ljust(sess.MAX_CONTROL)) == sess.Ack(offset=2**63 - 1)
    hello = sess.decode(b'{"t":"hello","port":"gps","scrollback":86400,"features":[]}')
    assert hello == sess.Hello(port="gps", scrollback=86400.0)
    assert isinstance(hello, sess.Hello) and type(hello.scrollback) is float
    long_reason = sess.decode(json.dumps({"t": "deny", "reason": "r" * 1000}).encode())
    assert long_reason == sess.Deny(reason="r" * 300), "a peer's text is cut to one line's worth"
    assert sess.decode(sess.encode(sess.GoAway(reason="é\u202e"))) == sess.GoAway(reason="é\u202e")


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.sampled_from(list(sess._TYPES)),
    st.lists(st.text(max_size=3), max_size=3),
)
_KEYS = st.sampled_from(["t", "port", "mode", "rx", "offset", "reason", "present", "features"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.dictionaries(_KEYS, _VALUES).map(lambda obj: json.dumps(obj).encode()))
def test_any_bytes_are_a_message_or_a_protocol_error(data: bytes) -> None:
    try:
        message = sess.decode(data)
    except ProtocolError:
        return
    assert sess.decode(sess.encode(message)) == message


def test_deeply_nested_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        sess.decode(b"[" * 2000)
