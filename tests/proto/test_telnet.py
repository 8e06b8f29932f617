"""Telnet codec: framing, escaping, sub-negotiation bounds and RFC 1143 negotiation."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserial.errors import ProtocolError
from meshserial.proto import telnet
from meshserial.proto.telnet import (
    BINARY,
    BRK,
    COM_PORT_OPTION,
    DO,
    DONT,
    ECHO,
    IAC,
    MAX_SUBNEGOTIATION,
    NOP,
    SB,
    SE,
    SGA,
    WILL,
    WONT,
    Anomaly,
    OptionChanged,
    Side,
    Subnegotiation,
    TelnetCodec,
    TelnetCommand,
    TelnetData,
    TelnetEvent,
    escape,
)

# ---- chunking helpers (every decoder test runs whole, byte by byte and randomly split) -----------
from tests.proto.chunking import CHUNKERS, Chunker, random_chunks


def merge_data(events: list[TelnetEvent]) -> list[TelnetEvent]:
    """Adjacent data events concatenated: how the stream was split must not matter beyond that."""
    out: list[TelnetEvent] = []
    for event in events:
        if isinstance(event, TelnetData) and out and isinstance(out[-1], TelnetData):
            out[-1] = TelnetData(data=out[-1].data + event.data)
        elif not (isinstance(event, TelnetData) and not event.data):
            out.append(event)
    return out


def feed(codec: TelnetCodec, wire: bytes, chunker: Chunker) -> list[TelnetEvent]:
    events: list[TelnetEvent] = []
    for chunk in chunker(wire):
        events.extend(codec.receive_data(chunk))
    return merge_data(events)


def plain_codec() -> TelnetCodec:
    return TelnetCodec(local_options=frozenset({BINARY, SGA}), remote_options=frozenset({BINARY, SGA}))


# ---- escaping --------------------------------------------------------------------------------------


def test_escape_doubles_iac_only() -> None:
    assert escape(b"a\xffb\xff\xff") == b"a\xff\xffb\xff\xff\xff\xff"


def test_escape_without_iac_returns_the_same_object() -> None:
    data = b"no escapes here" * 10
    assert escape(data) is data


def test_send_data_escapes() -> None:
    codec = plain_codec()
    codec.send_data(b"\x00\xff\x01")
    codec.send_data(b"")
    assert codec.data_to_send() == b"\x00\xff\xff\x01"
    assert codec.data_to_send() == b""


def test_fast_path_returns_the_chunk_itself() -> None:
    codec = plain_codec()
    chunk = bytes(range(255)) * 100
    [event] = codec.receive_data(chunk)
    assert isinstance(event, TelnetData)
    assert event.data is chunk


def test_bytearray_and_memoryview_input_are_accepted() -> None:
    codec = plain_codec()
    assert codec.receive_data(bytearray(b"ab")) == [TelnetData(data=b"ab")]  # type: ignore[arg-type]
    assert codec.receive_data(memoryview(b"c\xff\xffd")) == [TelnetData(data=b"c\xffd")]  # type: ignore[arg-type]


# ---- decode table ----------------------------------------------------------------------------------

DECODE_TABLE: list[tuple[str, bytes, list[TelnetEvent]]] = [
    ("plain", b"hello", [TelnetData(data=b"hello")]),
    ("escaped iac", b"a\xff\xffb", [TelnetData(data=b"a\xffb")]),
    ("only iacs", b"\xff\xff\xff\xff", [TelnetData(data=b"\xff\xff")]),
    ("nop", b"a\xff\xf1b", [TelnetData(data=b"a"), TelnetCommand(code=NOP), TelnetData(data=b"b")]),
    ("brk", b"\xff\xf3", [TelnetCommand(code=BRK)]),
    ("ga", b"\xff\xf9", [TelnetCommand(code=telnet.GA)]),
    (
        "sb with doubled iac",
        b"x\xff\xfa\x2c\x0b\xff\xff\xff\xf0y",
        [TelnetData(data=b"x"), Subnegotiation(option=44, payload=b"\x0b\xff"), TelnetData(data=b"y")],
    ),
    ("empty sb", b"\xff\xfa\x2c\xff\xf0", [Subnegotiation(option=44, payload=b"")]),
    (
        "iac x inside sb is dropped",
        b"\xff\xfa\x2c\x01\xff\xf1\x02\xff\xf0",
        [
            Anomaly(reason="IAC 241 inside sub-negotiation dropped"),
            Subnegotiation(option=44, payload=b"\x01\x02"),
        ],
    ),
    ("stray se", b"\xff\xf0z", [Anomaly(reason="IAC SE outside sub-negotiation"), TelnetData(data=b"z")]),
    (
        "iac non-command",
        b"\xff\x41z",
        [Anomaly(reason="IAC followed by non-command byte 65"), TelnetData(data=b"z")],
    ),
    ("data ends in iac iac", b"ab\xff\xff", [TelnetData(data=b"ab\xff")]),
]


@CHUNKERS
@pytest.mark.parametrize(
    ("wire", "expected"), [(w, e) for _, w, e in DECODE_TABLE], ids=[n for n, _, _ in DECODE_TABLE]
)
def test_decode(wire: bytes, expected: list[TelnetEvent], chunker: Chunker) -> None:
    codec = plain_codec()
    assert feed(codec, wire, chunker) == expected
    assert codec.buffered == 0


@CHUNKERS
def test_subnegotiation_at_the_cap_is_accepted(chunker: Chunker) -> None:
    payload = b"\xff" * MAX_SUBNEGOTIATION
    wire = bytes((IAC, SB, 44)) + escape(payload) + bytes((IAC, SE))
    assert feed(plain_codec(), wire, chunker) == [Subnegotiation(option=44, payload=payload)]


@CHUNKERS
def test_subnegotiation_over_the_cap_is_a_protocol_error(chunker: Chunker) -> None:
    codec = plain_codec()
    wire = bytes((IAC, SB, 44)) + b"a" * (MAX_SUBNEGOTIATION + 1)
    with pytest.raises(ProtocolError):
        feed(codec, wire, chunker)
    assert codec.buffered <= MAX_SUBNEGOTIATION
    with pytest.raises(ProtocolError):  # the stream stays failed
        codec.receive_data(b"more")


def test_unterminated_subnegotiation_is_held_between_calls() -> None:
    codec = plain_codec()
    assert codec.receive_data(b"\xff\xfa\x2c\x01\x02") == []
    assert codec.buffered == 2
    assert codec.receive_data(b"\xff") == []
    assert codec.receive_data(b"\xf0ok") == [
        Subnegotiation(option=44, payload=b"\x01\x02"),
        TelnetData(data=b"ok"),
    ]


def test_send_subnegotiation_escapes_payload() -> None:
    codec = plain_codec()
    codec.send_subnegotiation(44, b"\x0b\xff")
    codec.send_command(NOP)
    assert codec.data_to_send() == b"\xff\xfa\x2c\x0b\xff\xff\xff\xf0\xff\xf1"


# ---- RFC 1143 negotiation --------------------------------------------------------------------------


@CHUNKERS
@pytest.mark.parametrize(
    ("wire", "answer"),
    [
        (bytes((IAC, DO, 24)), bytes((IAC, WONT, 24))),  # refuse unknown: DO x -> WONT x
        (bytes((IAC, WILL, 31)), bytes((IAC, DONT, 31))),  # WILL x -> DONT x
        (bytes((IAC, WONT, 24)), b""),  # never answer a WONT/DONT that changes nothing
        (bytes((IAC, DONT, 24)), b""),
        (bytes((IAC, WONT, SGA)), b""),
        (bytes((IAC, DONT, SGA)), b""),
    ],
)
def test_refusals_and_silence(wire: bytes, answer: bytes, chunker: Chunker) -> None:
    codec = plain_codec()
    assert feed(codec, wire, chunker) == []
    assert codec.data_to_send() == answer


@CHUNKERS
def test_peer_offer_is_accepted_once(chunker: Chunker) -> None:
    codec = plain_codec()
    events = feed(codec, bytes((IAC, WILL, SGA, IAC, WILL, SGA, IAC, DO, BINARY)), chunker)
    assert events == [
        OptionChanged(option=SGA, side=Side.REMOTE, enabled=True),
        OptionChanged(option=BINARY, side=Side.LOCAL, enabled=True),
    ]
    assert codec.data_to_send() == bytes((IAC, DO, SGA, IAC, WILL, BINARY))
    assert codec.enabled(Side.REMOTE, SGA)
    assert codec.enabled(Side.LOCAL, BINARY)
    assert not codec.enabled(Side.LOCAL, SGA)


def test_our_request_agreed_is_not_answered() -> None:
    codec = plain_codec()
    codec.request(Side.LOCAL, SGA, True)
    codec.request(Side.LOCAL, SGA, True)  # already asking: not sent twice
    assert codec.data_to_send() == bytes((IAC, WILL, SGA))
    assert codec.receive_data(bytes((IAC, DO, SGA))) == [
        OptionChanged(option=SGA, side=Side.LOCAL, enabled=True)
    ]
    assert codec.data_to_send() == b""


def test_our_request_refused() -> None:
    codec = plain_codec()
    codec.request(Side.REMOTE, COM_PORT_OPTION, True)
    codec.data_to_send()
    assert codec.receive_data(bytes((IAC, WONT, COM_PORT_OPTION))) == [
        OptionChanged(option=COM_PORT_OPTION, side=Side.REMOTE, enabled=False)
    ]
    assert codec.data_to_send() == b""


def test_peer_disables_an_enabled_option() -> None:
    codec = plain_codec()
    codec.receive_data(bytes((IAC, WILL, SGA)))
    codec.data_to_send()
    assert codec.receive_data(bytes((IAC, WONT, SGA))) == [
        OptionChanged(option=SGA, side=Side.REMOTE, enabled=False)
    ]
    assert codec.data_to_send() == bytes((IAC, DONT, SGA))


def test_change_of_mind_is_queued_not_sent() -> None:
    # RFC 1143 §7: WANTYES + "disable" sets the queue bit; the peer's WILL is then answered DONT.
    codec = plain_codec()
    codec.request(Side.REMOTE, SGA, True)
    codec.request(Side.REMOTE, SGA, False)
    assert codec.data_to_send() == bytes((IAC, DO, SGA))
    assert codec.receive_data(bytes((IAC, WILL, SGA))) == []
    assert codec.data_to_send() == bytes((IAC, DONT, SGA))
    assert codec.receive_data(bytes((IAC, WONT, SGA))) == []
    assert not codec.enabled(Side.REMOTE, SGA)


def test_queued_reenable_while_disabling() -> None:
    codec = plain_codec()
    codec.receive_data(bytes((IAC, DO, SGA)))
    codec.request(Side.LOCAL, SGA, False)
    codec.request(Side.LOCAL, SGA, True)
    assert codec.data_to_send() == bytes((IAC, WILL, SGA, IAC, WONT, SGA))
    assert codec.receive_data(bytes((IAC, DONT, SGA))) == []
    assert codec.data_to_send() == bytes((IAC, WILL, SGA))
    assert codec.receive_data(bytes((IAC, DO, SGA))) == [
        OptionChanged(option=SGA, side=Side.LOCAL, enabled=True)
    ]


def test_wantyes_opposite_refused() -> None:
    codec = plain_codec()
    codec.request(Side.LOCAL, SGA, True)
    codec.request(Side.LOCAL, SGA, False)
    codec.request(Side.LOCAL, SGA, False)
    assert codec.receive_data(bytes((IAC, DONT, SGA))) == [
        OptionChanged(option=SGA, side=Side.LOCAL, enabled=False)
    ]
    assert codec.data_to_send() == bytes((IAC, WILL, SGA))


def test_peer_violation_dont_answered_by_will() -> None:
    codec = plain_codec()
    codec.receive_data(bytes((IAC, WILL, SGA)))
    codec.request(Side.REMOTE, SGA, False)
    codec.data_to_send()
    [anomaly] = codec.receive_data(bytes((IAC, WILL, SGA)))
    assert isinstance(anomaly, Anomaly)
    assert not codec.enabled(Side.REMOTE, SGA)
    assert codec.data_to_send() == b""
    # Same, with a queued re-enable: the peer's WILL settles it as enabled.
    codec.receive_data(bytes((IAC, WILL, SGA)))
    codec.request(Side.REMOTE, SGA, False)
    codec.request(Side.REMOTE, SGA, True)
    events = codec.receive_data(bytes((IAC, WILL, SGA)))
    assert events[-1] == OptionChanged(option=SGA, side=Side.REMOTE, enabled=True)


def test_disable_noops() -> None:
    codec = plain_codec()
    codec.request(Side.LOCAL, SGA, False)  # NO: nothing to do
    assert codec.data_to_send() == b""
    codec.request(Side.LOCAL, SGA, True)
    codec.request(Side.LOCAL, SGA, True)
    codec.receive_data(bytes((IAC, DO, SGA)))
    codec.request(Side.LOCAL, SGA, False)
    codec.request(Side.LOCAL, SGA, False)  # WANTNO: already in flight
    assert codec.data_to_send() == bytes((IAC, WILL, SGA, IAC, WONT, SGA))
    assert codec.receive_data(bytes((IAC, DONT, SGA))) == []


OPTIONS = [BINARY, ECHO, SGA, COM_PORT_OPTION, 24]


@settings(max_examples=200, deadline=None)
@given(
    policy_a=st.tuples(st.frozensets(st.sampled_from(OPTIONS)), st.frozensets(st.sampled_from(OPTIONS))),
    policy_b=st.tuples(st.frozensets(st.sampled_from(OPTIONS)), st.frozensets(st.sampled_from(OPTIONS))),
    actions=st.lists(
        st.tuples(st.booleans(), st.sampled_from(list(Side)), st.sampled_from(OPTIONS), st.booleans()),
        max_size=30,
    ),
)
def test_negotiation_cannot_loop(
    policy_a: tuple[frozenset[int], frozenset[int]],
    policy_b: tuple[frozenset[int], frozenset[int]],
    actions: list[tuple[bool, Side, int, bool]],
) -> None:
    a = TelnetCodec(local_options=policy_a[0], remote_options=policy_a[1])
    b = TelnetCodec(local_options=policy_b[0], remote_options=policy_b[1])
    for on_a, side, option, enable in actions:
        (a if on_a else b).request(side, option, enable)
        # Interleave delivery with requests, as a real network would.
        if option % 2:
            b.receive_data(a.data_to_send())
            a.receive_data(b.data_to_send())
    for _ in range(10):
        to_b, to_a = a.data_to_send(), b.data_to_send()
        if not to_a and not to_b:
            break
        b.receive_data(to_b)
        a.receive_data(to_a)
    else:
        pytest.fail("negotiation did not settle")
    for option in OPTIONS:
        assert a.enabled(Side.LOCAL, option) == b.enabled(Side.REMOTE, option)
        assert a.enabled(Side.REMOTE, option) == b.enabled(Side.LOCAL, option)
        if a.enabled(Side.LOCAL, option):
            assert option in policy_a[0] or option in {o for _, s, o, e in actions if s is Side.LOCAL}


# ---- properties ------------------------------------------------------------------------------------

INTERESTING = st.lists(
    st.one_of(
        st.binary(max_size=20),
        st.sampled_from(
            [
                b"\xff",
                b"\xff\xff",
                b"\xff\xfa",
                b"\xff\xf0",
                b"\xff\xfa\x2c",
                b"\xff\xfb",
                b"\xff\xfd\x18",
                b"\xff\xf3",
            ]
        ),
    ),
    max_size=60,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(wire=INTERESTING, seed=st.integers(0, 1000))
def test_any_bytes_give_events_or_protocol_error(wire: bytes, seed: int) -> None:
    codec = plain_codec()
    try:
        for chunk in random_chunks(wire, seed):
            for event in codec.receive_data(chunk):
                assert isinstance(
                    event, TelnetData | TelnetCommand | Subnegotiation | OptionChanged | Anomaly
                )
    except ProtocolError:
        pass
    assert codec.buffered <= MAX_SUBNEGOTIATION


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=2000), seed=st.integers(0, 1000))
def test_data_round_trip(payload: bytes, seed: int) -> None:
    sender, receiver = plain_codec(), plain_codec()
    sender.send_data(payload)
    events = []
    for chunk in random_chunks(sender.data_to_send(), seed):
        events.extend(receiver.receive_data(chunk))
    assert all(isinstance(e, TelnetData) for e in events)
    assert b"".join(e.data for e in events if isinstance(e, TelnetData)) == payload


def test_long_random_feed_stays_bounded() -> None:
    rng = random.Random(7)
    codec = TelnetCodec(local_options=frozenset({SGA}), remote_options=frozenset({SGA}))
    fed = 0
    while fed < 2_000_000:
        chunk = bytes(rng.choice((0xFF, 0xFA, 0xF0, 0xFB, 0xFD, rng.randrange(256))) for _ in range(4096))
        fed += len(chunk)
        try:
            codec.receive_data(chunk)
        except ProtocolError:
            codec = TelnetCodec(local_options=frozenset({SGA}), remote_options=frozenset({SGA}))
        codec.data_to_send()
        assert codec.buffered <= MAX_SUBNEGOTIATION
        assert len(codec._options) <= 4  # only policy options ever get state


def test_decode_speed_one_mebibyte(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(3)
    raw = bytearray(rng.randbytes(1 << 20))
    wire = escape(bytes(raw))  # random bytes: about one 0xFF in 256, each doubled
    codec = plain_codec()
    start = time.perf_counter()
    events = codec.receive_data(wire)
    elapsed = time.perf_counter() - start
    assert events == [TelnetData(data=bytes(raw))]
    with capsys.disabled():
        print(f"\n  telnet decode: 1 MiB with {raw.count(0xFF)} escaped 0xFF in {elapsed * 1000:.1f} ms")
