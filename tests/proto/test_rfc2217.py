"""RFC 2217 engines: wire tables for both roles, paired sessions, peer quirks and properties."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserial.errors import ProtocolError, UsageError
from meshserial.proto.rfc2217 import (
    MAX_PENDING_PER_COMMAND,
    BreakReceived,
    ClientSide,
    Command,
    ComPortActive,
    ComPortRefused,
    Control,
    Data,
    Event,
    FlowResume,
    FlowSuspend,
    Notice,
    Purge,
    Reply,
    ReplyTimeout,
    Request,
    ServerSide,
    SignatureReceived,
)
from meshserial.proto.settings import LineState, ModemState
from meshserial.proto.telnet import MAX_SUBNEGOTIATION, escape

# ---- helpers ---------------------------------------------------------------------------------------
from tests.proto.chunking import CHUNKERS, Chunker, random_chunks, whole


def merge_data(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        if isinstance(event, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(data=out[-1].data + event.data)
        else:
            out.append(event)
    return out


def feed_server(server: ServerSide, wire: bytes, chunker: Chunker = whole) -> list[Event]:
    events: list[Event] = []
    for chunk in chunker(wire):
        events.extend(server.receive_data(chunk))
    return merge_data(events)


def feed_client(client: ClientSide, wire: bytes, chunker: Chunker = whole, now: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for chunk in chunker(wire):
        events.extend(client.receive_data(chunk, now))
    return merge_data(events)


def sb(code: int, value: bytes = b"") -> bytes:
    return b"\xff\xfa\x2c" + bytes((code,)) + escape(value) + b"\xff\xf0"


WILL_COM = b"\xff\xfb\x2c"
DO_COM = b"\xff\xfd\x2c"


def active_server(**kwargs: object) -> ServerSide:
    server = ServerSide(**kwargs)  # type: ignore[arg-type]
    server.initiate()
    server.receive_data(WILL_COM)
    server.data_to_send()
    return server


def active_client(**kwargs: object) -> ClientSide:
    client = ClientSide(**kwargs)  # type: ignore[arg-type]
    client.initiate(0.0)
    client.receive_data(DO_COM, 0.0)
    client.data_to_send()
    return client


# ---- client encode table (reference §1.5 wire examples) -------------------------------------------

CLIENT_ENCODE = [
    (Command.SET_BAUDRATE, 115200, "ff fa 2c 01 00 01 c2 00 ff f0"),
    (Command.SET_BAUDRATE, 0, "ff fa 2c 01 00 00 00 00 ff f0"),
    (Command.SET_BAUDRATE, 0x00FF_01FF, "ff fa 2c 01 00 ff ff 01 ff ff ff f0"),
    (Command.SET_DATASIZE, 8, "ff fa 2c 02 08 ff f0"),
    (Command.SET_PARITY, 1, "ff fa 2c 03 01 ff f0"),
    (Command.SET_STOPSIZE, 1, "ff fa 2c 04 01 ff f0"),
    (Command.SET_CONTROL, Control.DTR_ON, "ff fa 2c 05 08 ff f0"),
    (Command.NOTIFY_LINESTATE, 0, "ff fa 2c 06 ff f0"),
    (Command.NOTIFY_MODEMSTATE, 0, "ff fa 2c 07 ff f0"),
    (Command.SET_LINESTATE_MASK, 0, "ff fa 2c 0a 00 ff f0"),
    (Command.SET_MODEMSTATE_MASK, 255, "ff fa 2c 0b ff ff ff f0"),
    (Command.PURGE_DATA, Purge.RX, "ff fa 2c 0c 01 ff f0"),
    (Command.SIGNATURE, 0, "ff fa 2c 00 ff f0"),
]


@pytest.mark.parametrize(
    ("command", "value", "wire"), CLIENT_ENCODE, ids=[f"{c.name}-{v}" for c, v, _ in CLIENT_ENCODE]
)
def test_client_encode(command: Command, value: int, wire: str) -> None:
    client = active_client()
    client.request(command, value, 0.0)
    assert client.data_to_send() == bytes.fromhex(wire)
    assert client.get_timer() == 3.0


@pytest.mark.parametrize("command", [Command.FLOWCONTROL_SUSPEND, Command.FLOWCONTROL_RESUME])
def test_client_flow_commands_only_when_enabled(command: Command) -> None:
    client = active_client()
    client.request(command, 0, 0.0)
    assert client.data_to_send() == b""
    client = active_client(send_flow_suspend=True)
    client.request(command, 0, 0.0)
    assert client.data_to_send() == sb(command)
    assert client.get_timer() is None  # no ack expected


@pytest.mark.parametrize(
    ("command", "value"),
    [
        (Command.SET_BAUDRATE, -1),
        (Command.SET_BAUDRATE, 2**32),
        (Command.SET_DATASIZE, 256),
        (Command.PURGE_DATA, -1),
    ],
)
def test_client_rejects_unencodable_values(command: Command, value: int) -> None:
    with pytest.raises(UsageError):
        active_client().request(command, value, 0.0)


def test_client_break_and_data() -> None:
    client = active_client()
    client.send_break()
    client.send_data(b"a\xffb")
    assert client.data_to_send() == b"\xff\xf3a\xff\xffb"


# ---- client decode table ---------------------------------------------------------------------------

CLIENT_DECODE: list[tuple[str, bytes, list[Event]]] = [
    (
        "baud ack",
        sb(101, (115200).to_bytes(4, "big")),
        [Reply(command=Command.SET_BAUDRATE, value=115200, solicited=False)],
    ),
    (
        "baud with 0xff",
        sb(101, bytes.fromhex("00ff01ff")),
        [Reply(command=Command.SET_BAUDRATE, value=0x00FF01FF, solicited=False)],
    ),
    (
        "sredird 8-byte baud",
        sb(101, bytes.fromhex("0001c200 0001c200")),
        [Reply(command=Command.SET_BAUDRATE, value=115200, solicited=False)],
    ),
    (
        "cisco 1-byte baud",
        sb(101, b"\x0e"),
        [Reply(command=Command.SET_BAUDRATE, value=115200, solicited=False)],
    ),
    ("cisco unknown code", sb(101, b"\x09"), [Notice(reason="SET-BAUDRATE with unusable value 09")]),
    ("2-byte baud", sb(101, b"\x01\x02"), [Notice(reason="SET-BAUDRATE with unusable value 0102")]),
    ("datasize", sb(102, b"\x08"), [Reply(command=Command.SET_DATASIZE, value=8, solicited=False)]),
    ("parity", sb(103, b"\x03"), [Reply(command=Command.SET_PARITY, value=3, solicited=False)]),
    ("stopsize", sb(104, b"\x03"), [Reply(command=Command.SET_STOPSIZE, value=3, solicited=False)]),
    ("control", sb(105, b"\x0b"), [Reply(command=Command.SET_CONTROL, value=11, solicited=False)]),
    ("linestate", sb(106, b"\x60"), [Reply(command=Command.NOTIFY_LINESTATE, value=0x60, solicited=False)]),
    ("modemstate", sb(107, b"\xb0"), [Reply(command=Command.NOTIFY_MODEMSTATE, value=0xB0, solicited=False)]),
    ("suspend", sb(108), [FlowSuspend()]),
    ("suspend resume", sb(108) + sb(108) + sb(109), [FlowSuspend(), FlowResume()]),
    (
        "linestate mask",
        sb(110, b"\x00"),
        [Reply(command=Command.SET_LINESTATE_MASK, value=0, solicited=False)],
    ),
    (
        "modemstate mask",
        sb(111, b"\xff"),
        [Reply(command=Command.SET_MODEMSTATE_MASK, value=255, solicited=False)],
    ),
    ("purge", sb(112, b"\x02"), [Reply(command=Command.PURGE_DATA, value=2, solicited=False)]),
    ("signature", sb(100, b"ser2net"), [SignatureReceived(text=b"ser2net")]),
    ("signature with 0xff", sb(100, b"a\xffb"), [SignatureReceived(text=b"a\xffb")]),
    (
        "extra byte",
        sb(102, b"\x08\x00"),
        [
            Notice(reason="SET_DATASIZE with 2 value bytes, using the first"),
            Reply(command=Command.SET_DATASIZE, value=8, solicited=False),
        ],
    ),
    ("missing byte", sb(102), [Notice(reason="SET_DATASIZE without a value")]),
    ("missing modem byte", sb(107), [Notice(reason="NOTIFY_MODEMSTATE without a value")]),
    (
        "client code from server",
        sb(5, b"\x01"),
        [Notice(reason="unexpected COM-PORT-OPTION code 5 from the server")],
    ),
    (
        "unknown code",
        sb(113, b"\x01"),
        [Notice(reason="unexpected COM-PORT-OPTION code 113 from the server")],
    ),
    ("empty", b"\xff\xfa\x2c\xff\xf0", [Notice(reason="empty COM-PORT-OPTION sub-negotiation")]),
    (
        "other option sb",
        b"\xff\xfa\x18\x01\xff\xf0",
        [Notice(reason="sub-negotiation for option 24 ignored")],
    ),
    (
        "data and brk",
        b"ab\xff\xffc\xff\xf3\xff\xf1d",
        [Data(data=b"ab\xffc"), BreakReceived(), Data(data=b"d")],
    ),
]


@CHUNKERS
@pytest.mark.parametrize(
    ("wire", "expected"), [(w, e) for _, w, e in CLIENT_DECODE], ids=[n for n, _, _ in CLIENT_DECODE]
)
def test_client_decode(wire: bytes, expected: list[Event], chunker: Chunker) -> None:
    client = active_client()
    assert feed_client(client, wire, chunker) == expected
    assert client.buffered == 0


@CHUNKERS
def test_client_answers_signature_request(chunker: Chunker) -> None:
    client = active_client(signature=b"me\xff")
    assert feed_client(client, sb(100), chunker) == []
    assert client.data_to_send() == sb(0, b"me\xff")


@CHUNKERS
def test_client_tracks_modem_lines(chunker: Chunker) -> None:
    client = active_client()
    assert client.modem_state is None
    feed_client(client, sb(107, b"\xb1"), chunker)
    assert client.modem_state == ModemState.CD | ModemState.DSR | ModemState.CTS


# ---- server decode table ---------------------------------------------------------------------------

SERVER_DECODE: list[tuple[str, bytes, list[Event], bytes]] = [
    ("baud", sb(1, (115200).to_bytes(4, "big")), [Request(command=Command.SET_BAUDRATE, value=115200)], b""),
    ("baud query", sb(1, bytes(4)), [Request(command=Command.SET_BAUDRATE, value=0)], b""),
    (
        "baud with 0xff",
        sb(1, bytes.fromhex("00ff01ff")),
        [Request(command=Command.SET_BAUDRATE, value=0x00FF01FF)],
        b"",
    ),
    (
        "baud 5 bytes",
        sb(1, bytes.fromhex("0001c20000")),
        [
            Notice(reason="SET-BAUDRATE with 5 value bytes"),
            Request(command=Command.SET_BAUDRATE, value=115200),
        ],
        b"",
    ),
    ("baud 2 bytes", sb(1, b"\x01\x02"), [Notice(reason="SET-BAUDRATE with unusable value 0102")], b""),
    ("datasize", sb(2, b"\x08"), [Request(command=Command.SET_DATASIZE, value=8)], b""),
    ("datasize 9 surfaces", sb(2, b"\x09"), [Request(command=Command.SET_DATASIZE, value=9)], b""),
    ("parity", sb(3, b"\x02"), [Request(command=Command.SET_PARITY, value=2)], b""),
    ("stopsize", sb(4, b"\x03"), [Request(command=Command.SET_STOPSIZE, value=3)], b""),
    ("control dtr on", sb(5, b"\x08"), [Request(command=Command.SET_CONTROL, value=Control.DTR_ON)], b""),
    ("control 200", sb(5, b"\xc8"), [Request(command=Command.SET_CONTROL, value=200)], b""),
    ("purge", sb(12, b"\x03"), [Request(command=Command.PURGE_DATA, value=Purge.BOTH)], b""),
    ("datasize empty", sb(2), [Notice(reason="SET_DATASIZE without a value")], b""),
    ("signature request", sb(0), [], sb(100, b"meshserial")),
    ("client signature", sb(0, b"pyserial"), [SignatureReceived(text=b"pyserial")], sb(100, b"meshserial")),
    ("linestate poll", sb(6), [], sb(106, b"\x00")),
    ("modemstate poll", sb(7), [], sb(107, b"\x30")),
    ("linestate mask", sb(10, b"\x10"), [], sb(110, b"\x10")),
    ("modemstate mask 255", sb(11, b"\xff"), [], sb(111, b"\xff")),
    ("modemstate mask empty", sb(11), [Notice(reason="SET_MODEMSTATE_MASK without a value")], b""),
    ("suspend", sb(8), [FlowSuspend()], b""),
    ("suspend resume", sb(8) + sb(9) + sb(9), [FlowSuspend(), FlowResume()], b""),
    ("unknown code", sb(13, b"\x01"), [Notice(reason="unknown COM-PORT-OPTION command 13")], b""),
    (
        "server code from client",
        sb(101, b"\x01"),
        [Notice(reason="unknown COM-PORT-OPTION command 101")],
        b"",
    ),
    ("empty", b"\xff\xfa\x2c\xff\xf0", [Notice(reason="empty COM-PORT-OPTION sub-negotiation")], b""),
    ("brk nop", b"\xff\xf3\xff\xf1", [BreakReceived()], b""),
    (
        "iac in sb",
        b"\xff\xfa\x2c\x02\xff\x01\x07\xff\xf0",
        [
            Notice(reason="IAC 1 inside sub-negotiation dropped"),
            Request(command=Command.SET_DATASIZE, value=7),
        ],
        b"",
    ),
    ("data", b"x\xff\xffy", [Data(data=b"x\xffy")], b""),
]


@CHUNKERS
@pytest.mark.parametrize(
    ("wire", "expected", "answer"),
    [(w, e, a) for _, w, e, a in SERVER_DECODE],
    ids=[n for n, _, _, _ in SERVER_DECODE],
)
def test_server_decode(wire: bytes, expected: list[Event], answer: bytes, chunker: Chunker) -> None:
    server = active_server(modem_state=ModemState.CTS | ModemState.DSR | ModemState.DELTA_CTS)
    assert feed_server(server, wire, chunker) == expected
    assert server.data_to_send() == answer
    assert server.buffered == 0


def test_server_suspend_flag() -> None:
    server = active_server()
    server.receive_data(sb(8))
    assert server.output_suspended
    server.receive_data(sb(9))
    assert not server.output_suspended


def test_server_cisco_baud_session() -> None:
    # ser2net S13: a one-byte SET-BAUDRATE switches the session to Cisco codes, acks included.
    server = active_server()
    assert server.receive_data(sb(1, b"\x0e")) == [Request(command=Command.SET_BAUDRATE, value=115200)]
    server.reply(Command.SET_BAUDRATE, 115200)
    server.reply(Command.SET_BAUDRATE, 250000)  # no Cisco code: four bytes
    assert server.data_to_send() == sb(101, b"\x0e") + sb(101, (250000).to_bytes(4, "big"))


# ---- server encode table ---------------------------------------------------------------------------

SERVER_ENCODE = [
    (Command.SET_BAUDRATE, 115200, "ff fa 2c 65 00 01 c2 00 ff f0"),
    (Command.SET_BAUDRATE, 0xFF, "ff fa 2c 65 00 00 00 ff ff ff f0"),
    (Command.SET_DATASIZE, 8, "ff fa 2c 66 08 ff f0"),
    (Command.SET_PARITY, 1, "ff fa 2c 67 01 ff f0"),
    (Command.SET_STOPSIZE, 2, "ff fa 2c 68 02 ff f0"),
    (Command.SET_CONTROL, Control.RTS_OFF, "ff fa 2c 69 0c ff f0"),
    (Command.PURGE_DATA, Purge.TX, "ff fa 2c 70 02 ff f0"),
]


@pytest.mark.parametrize(
    ("command", "value", "wire"), SERVER_ENCODE, ids=[f"{c.name}-{v}" for c, v, _ in SERVER_ENCODE]
)
def test_server_encode(command: Command, value: int, wire: str) -> None:
    server = active_server()
    server.reply(command, value)
    assert server.data_to_send() == bytes.fromhex(wire)


@pytest.mark.parametrize(
    ("command", "value"),
    [
        (Command.SET_MODEMSTATE_MASK, 1),
        (Command.SIGNATURE, 0),
        (Command.SET_DATASIZE, 300),
        (Command.SET_BAUDRATE, -5),
    ],
)
def test_server_reply_misuse(command: Command, value: int) -> None:
    with pytest.raises(UsageError):
        active_server().reply(command, value)


@pytest.mark.parametrize("signature", [b"", b"x" * 500])
def test_signature_must_be_sane(signature: bytes) -> None:
    with pytest.raises(UsageError):
        ServerSide(signature=signature)
    with pytest.raises(UsageError):
        ClientSide(signature=signature)


# ---- opening sequences of real peers (reference §2.2, §3.1) ---------------------------------------

PYSERIAL_OPEN = bytes.fromhex("fffd01 fffb03 fffd03 fffd2c fffb2c")
SER2NET_OPEN = bytes.fromhex("fffb03 fffd03 fffb01 fffe01 fffd00 fffb00 fffd2c")
PORTMANAGER_OPEN = bytes.fromhex("fffb01 fffb03 fffd00 fffb2c")


@CHUNKERS
def test_server_opening_against_pyserial(chunker: Chunker) -> None:
    server = ServerSide(modem_state=ModemState.CTS | ModemState.DSR | ModemState.CD)
    server.initiate()
    assert server.data_to_send() == bytes.fromhex("fffb03 fffd03 fffb01 fffd00 fffb00 fffd2c")
    assert feed_server(server, PYSERIAL_OPEN, chunker) == [ComPortActive()]
    assert server.active
    # pyserial's DO COM-PORT is answered WILL; exactly one NOTIFY-MODEMSTATE follows its WILL.
    assert server.data_to_send() == bytes.fromhex("fffb2c") + sb(107, b"\xb0")


def test_server_initial_notify_when_lines_unknown() -> None:
    server = ServerSide()
    server.initiate()
    server.data_to_send()
    assert server.receive_data(WILL_COM) == [ComPortActive()]
    assert server.data_to_send() == sb(107, b"\x00")


def test_server_withdrawn_com_port() -> None:
    server = active_server()
    assert server.receive_data(b"\xff\xfc\x2c") == [Notice(reason="client withdrew COM-PORT-OPTION")]
    assert not server.active
    assert server.data_to_send() == b"\xff\xfe\x2c"


def test_server_com_port_withdrawn_on_our_side_only() -> None:
    """DO then DONT COM-PORT-OPTION concerns our side of the option; the client's WILL still stands,
    so the port stays in use and nothing is reported."""
    server = active_server()
    assert server.receive_data(DO_COM) == []
    assert server.data_to_send() == b"\xff\xfb\x2c"
    assert server.receive_data(b"\xff\xfe\x2c") == []
    assert server.active
    assert server.data_to_send() == b"\xff\xfc\x2c"


@CHUNKERS
def test_client_opening_against_ser2net(chunker: Chunker) -> None:
    client = ClientSide()
    client.initiate(0.0)
    assert client.data_to_send() == bytes.fromhex("fffb2c fffb00 fffd00 fffb03 fffd03")
    client.request(Command.SET_BAUDRATE, 115200, 0.0)
    assert client.data_to_send() == b""  # held until DO COM-PORT
    events = feed_client(client, SER2NET_OPEN + b"\xff\xfc\x2c" + sb(107, b"\x00"), chunker, now=1.0)
    assert events == [ComPortActive(), Reply(command=Command.NOTIFY_MODEMSTATE, value=0, solicited=False)]
    assert client.active
    assert client.modem_state == ModemState(0)
    # DO ECHO answers WILL ECHO; DONT ECHO, WONT COM-PORT and the agreed options are not answered.
    assert client.data_to_send() == bytes.fromhex("fffd01") + sb(1, (115200).to_bytes(4, "big"))
    assert client.get_timer() == 4.0


@CHUNKERS
def test_client_opening_against_portmanager(chunker: Chunker) -> None:
    client = ClientSide()
    client.initiate(0.0)
    client.data_to_send()
    events = feed_client(client, PORTMANAGER_OPEN + DO_COM + b"\xff\xfd\x03", chunker)
    assert events == [ComPortActive()]
    # WILL COM-PORT from the server is tolerated (agreed); DO BINARY and DO SGA answer our own offers.
    assert client.data_to_send() == bytes.fromhex("fffd01 fffd2c")


def test_client_refused() -> None:
    client = ClientSide()
    client.initiate(0.0)
    client.request(Command.SET_DATASIZE, 8, 0.0)
    assert client.receive_data(b"\xff\xfe\x2c", 0.5) == [ComPortRefused()]
    assert not client.active
    client.data_to_send()
    client.request(Command.SET_PARITY, 1, 1.0)
    assert client.data_to_send() == b""  # never sent to a server that refused
    assert client.handle_timer(3.0) == [ReplyTimeout(command=Command.SET_DATASIZE, value=8)]
    assert client.handle_timer(4.0) == [ReplyTimeout(command=Command.SET_PARITY, value=1)]
    assert client.get_timer() is None


# ---- client ack matching ---------------------------------------------------------------------------


def test_acks_fifo_per_code_and_different_value() -> None:
    client = active_client()
    client.request(Command.SET_CONTROL, Control.DTR_ON, 0.0)
    client.request(Command.SET_CONTROL, Control.RTS_ON, 0.0)
    client.request(Command.SET_BAUDRATE, 250000, 0.0)
    wire = sb(105, b"\x08") + sb(101, (230400).to_bytes(4, "big")) + sb(105, b"\x0b") + sb(105, b"\x0b")
    assert client.receive_data(wire, 0.1) == [
        Reply(command=Command.SET_CONTROL, value=8, solicited=True),
        Reply(command=Command.SET_BAUDRATE, value=230400, solicited=True),  # "value in use" (RFC)
        Reply(command=Command.SET_CONTROL, value=11, solicited=True),
        Reply(command=Command.SET_CONTROL, value=11, solicited=False),  # another ser2net client (S4)
    ]
    assert client.get_timer() is None


def test_cisco_ack_settles_a_four_byte_request() -> None:
    client = active_client()
    client.request(Command.SET_BAUDRATE, 9600, 0.0)
    assert client.receive_data(sb(101, b"\x08"), 0.1) == [
        Reply(command=Command.SET_BAUDRATE, value=9600, solicited=True)
    ]


def test_ser2net_43_mask_quirk() -> None:
    # S9: ser2net 4.3.11 answers SET-MODEMSTATE-MASK with a NOTIFY; the initial NOTIFY sent when
    # COM-PORT is agreed must not be taken as that answer.
    client = ClientSide()
    client.initiate(0.0)
    client.request(Command.SET_MODEMSTATE_MASK, 0x30, 0.0)
    client.request(Command.SET_LINESTATE_MASK, 0x10, 0.0)
    events = client.receive_data(DO_COM + sb(107, b"\x30"), 0.0)
    assert events == [ComPortActive(), Reply(command=Command.NOTIFY_MODEMSTATE, value=0x30, solicited=False)]
    assert client.receive_data(sb(107, b"\x20") + sb(106, b"\x00"), 0.1) == [
        Reply(command=Command.NOTIFY_MODEMSTATE, value=0x20, solicited=False),
        Reply(command=Command.SET_MODEMSTATE_MASK, value=0x30, solicited=True),
        Reply(command=Command.NOTIFY_LINESTATE, value=0, solicited=False),
        Reply(command=Command.SET_LINESTATE_MASK, value=0x10, solicited=True),
    ]
    assert client.get_timer() is None


def test_poll_answer_is_solicited_and_leaves_mask_pending() -> None:
    client = active_client()
    client.receive_data(sb(107, b"\x00"), 0.0)  # the initial report
    client.request(Command.SET_MODEMSTATE_MASK, 0xFF, 0.0)
    client.request(Command.NOTIFY_MODEMSTATE, 0, 0.0)
    # FIFO per code: the poll answer is taken by the poll, the mask still waits for 111.
    assert client.receive_data(sb(107, b"\x10"), 0.1) == [
        Reply(command=Command.NOTIFY_MODEMSTATE, value=0x10, solicited=True)
    ]
    assert client.receive_data(sb(111, b"\xff"), 0.1) == [
        Reply(command=Command.SET_MODEMSTATE_MASK, value=255, solicited=True)
    ]


def test_signature_request_settled_by_signature() -> None:
    client = active_client()
    client.request(Command.SIGNATURE, 0, 0.0)
    assert client.data_to_send() == sb(0)
    assert client.receive_data(sb(100, b"ser2net"), 0.1) == [SignatureReceived(text=b"ser2net")]
    assert client.get_timer() is None


def test_timeouts_then_session_goes_on() -> None:
    client = active_client(reply_timeout=2.0)
    client.request(Command.PURGE_DATA, 1, 10.0)
    client.request(Command.SET_CONTROL, Control.DTR_ON, 11.0)
    assert client.get_timer() == 12.0
    assert client.handle_timer(11.9) == []
    assert client.handle_timer(12.0) == [ReplyTimeout(command=Command.PURGE_DATA, value=1)]
    assert client.get_timer() == 13.0
    assert client.handle_timer(20.0) == [ReplyTimeout(command=Command.SET_CONTROL, value=8)]
    assert client.receive_data(sb(112, b"\x01"), 21.0) == [
        Reply(command=Command.PURGE_DATA, value=1, solicited=False)
    ]
    client.send_data(b"still alive")
    assert client.data_to_send() == sb(12, b"\x01") + sb(5, b"\x08") + b"still alive"


def test_pending_table_is_bounded() -> None:
    client = ClientSide()
    client.initiate(0.0)
    for i in range(1000):
        client.request(Command(i % 8) if i % 8 not in (8, 9) else Command.PURGE_DATA, i % 256, float(i))
    assert sum(len(q) for q in client._pending.values()) <= MAX_PENDING_PER_COMMAND * len(Command)
    # Held commands are sent on DO in request order, only those still remembered.
    client.data_to_send()
    client.receive_data(DO_COM, 1000.0)
    assert len(client.data_to_send()) < 2000


# ---- server notifications --------------------------------------------------------------------------


def test_modemstate_deltas_and_masks() -> None:
    server = ServerSide()
    server.initiate()
    server.notify_modemstate(ModemState.CTS)  # cached only: COM-PORT not agreed
    server.receive_data(WILL_COM)
    assert server.data_to_send().endswith(sb(107, b"\x10"))
    server.notify_modemstate(ModemState.CTS)  # no change, no message
    assert server.data_to_send() == b""
    server.notify_modemstate(ModemState.CTS | ModemState.DSR | ModemState.RI)
    assert server.data_to_send() == sb(107, bytes((0x10 | 0x20 | 0x40 | 0x02,)))
    server.notify_modemstate(ModemState.CTS | ModemState.DSR)  # RI fell: trailing edge
    assert server.data_to_send() == sb(107, bytes((0x30 | 0x04,)))
    server.receive_data(sb(11, bytes((0x11,))))  # only CTS and its delta
    assert server.data_to_send() == sb(111, b"\x11")
    server.notify_modemstate(ModemState.CTS | ModemState.DSR | ModemState.CD)  # CD change masked out
    assert server.data_to_send() == sb(107, b"\x10")  # CTS level survives the mask
    server.receive_data(sb(11, b"\x01"))
    server.data_to_send()
    server.notify_modemstate(ModemState.CTS)  # only DSR/CD changed: nothing survives
    assert server.data_to_send() == b""
    server.notify_modemstate(ModemState(0))
    assert server.data_to_send() == sb(107, b"\x01")
    server.notify_modemstate(ModemState(0), force=True)
    assert server.data_to_send() == sb(107, b"\x00")
    server.notify_modemstate(ModemState.DELTA_DSR)  # caller-supplied delta bits are kept, then masked
    assert server.data_to_send() == b""


def test_linestate_mask() -> None:
    server = active_server()
    server.notify_linestate(LineState.BREAK_DETECT)  # initial mask 0: nothing
    assert server.data_to_send() == b""
    server.receive_data(sb(10, b"\x1c"))
    server.data_to_send()
    server.notify_linestate(LineState.BREAK_DETECT | LineState.DATA_READY)
    assert server.data_to_send() == sb(106, b"\x10")
    server.receive_data(sb(6))  # poll: the cached, unmasked state
    assert server.data_to_send() == sb(106, b"\x11")


# ---- paired sessions -------------------------------------------------------------------------------


class Pair:
    """Our client and our server, bytes piped between them, with a fake port behind the server."""

    def __init__(self, **client_kwargs: object) -> None:
        self.client = ClientSide(**client_kwargs)  # type: ignore[arg-type]
        self.server = ServerSide(signature=b"srv", modem_state=ModemState.CTS | ModemState.DSR)
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.now = 0.0
        self.port = {
            Command.SET_BAUDRATE: 9600,
            Command.SET_DATASIZE: 8,
            Command.SET_PARITY: 1,
            Command.SET_STOPSIZE: 1,
        }

    def pump(self) -> None:
        for _ in range(20):
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return
            for chunk in random_chunks(to_server, len(to_server)):
                for event in self.server.receive_data(chunk):
                    self.server_events.append(event)
                    if isinstance(event, Request):
                        self.apply(event)
            for chunk in random_chunks(to_client, len(to_client)):
                self.client_events.extend(self.client.receive_data(chunk, self.now))
        pytest.fail("pair did not settle")

    def apply(self, request: Request) -> None:
        if request.command in self.port:
            if request.value:
                self.port[request.command] = request.value
            self.server.reply(request.command, self.port[request.command])
        else:
            self.server.reply(request.command, request.value)

    def take(self) -> tuple[list[Event], list[Event]]:
        out = merge_data(self.client_events), merge_data(self.server_events)
        self.client_events, self.server_events = [], []
        return out


def test_paired_pyserial_like_open_and_session() -> None:
    pair = Pair(send_flow_suspend=True)
    pair.client.initiate(0.0)
    pair.server.initiate()
    opening = [
        (Command.SET_BAUDRATE, 115200),
        (Command.SET_DATASIZE, 8),
        (Command.SET_PARITY, 1),
        (Command.SET_STOPSIZE, 1),
        (Command.SET_CONTROL, Control.FLOW_NONE),
        (Command.SET_CONTROL, Control.DTR_ON),
        (Command.SET_CONTROL, Control.RTS_ON),
        (Command.PURGE_DATA, Purge.RX),
        (Command.PURGE_DATA, Purge.TX),
    ]
    for command, value in opening:
        pair.client.request(command, value, 0.0)
    pair.pump()
    client_events, server_events = pair.take()
    assert pair.client.active and pair.server.active
    assert client_events[0] == ComPortActive()
    assert [e for e in client_events if isinstance(e, Reply) and e.solicited] == [
        Reply(command=c, value=v, solicited=True) for c, v in opening
    ]
    assert server_events == [ComPortActive()] + [Request(command=c, value=v) for c, v in opening]
    assert pair.client.modem_state == ModemState.CTS | ModemState.DSR
    assert pair.client.get_timer() is None

    # Query returns the value in use.
    pair.client.request(Command.SET_BAUDRATE, 0, 1.0)
    pair.pump()
    assert pair.take()[0] == [Reply(command=Command.SET_BAUDRATE, value=115200, solicited=True)]

    # Modem notifications through a mask.
    pair.client.request(Command.SET_MODEMSTATE_MASK, int(ModemState.CD | ModemState.DELTA_CD), 1.0)
    pair.pump()
    pair.take()
    pair.server.notify_modemstate(ModemState.CTS)  # DSR fell: masked out
    pair.server.notify_modemstate(ModemState.CTS | ModemState.CD)
    pair.pump()
    assert pair.take()[0] == [Reply(command=Command.NOTIFY_MODEMSTATE, value=0x88, solicited=False)]
    assert pair.client.modem_state == ModemState.CD

    # Suspend / resume.
    pair.client.request(Command.FLOWCONTROL_SUSPEND, 0, 2.0)
    pair.pump()
    assert pair.server.output_suspended
    pair.client.request(Command.FLOWCONTROL_RESUME, 0, 2.0)
    pair.pump()
    assert not pair.server.output_suspended
    assert pair.take()[1] == [FlowSuspend(), FlowResume()]

    # Signatures both ways.
    pair.client.request_signature(3.0)
    pair.pump()
    assert pair.take()[0] == [SignatureReceived(text=b"srv")]

    # Data both ways, with 0xFF, and BREAK.
    pair.client.send_data(b"to device \xff\xff!")
    pair.client.send_break()
    pair.server.send_data(b"\xfffrom device")
    pair.pump()
    client_events, server_events = pair.take()
    assert client_events == [Data(data=b"\xfffrom device")]
    assert server_events == [Data(data=b"to device \xff\xff!"), BreakReceived()]
    assert pair.client.get_timer() is None


# ---- properties ------------------------------------------------------------------------------------

WIRE = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from(
            [
                b"\xff",
                b"\xff\xff",
                b"\xff\xfa\x2c",
                b"\xff\xf0",
                b"\xff\xfb\x2c",
                b"\xff\xfd\x2c",
                b"\xff\xfe\x2c",
            ]
        ),
        st.builds(sb, st.integers(0, 255), st.binary(max_size=6)),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(wire=WIRE, seed=st.integers(0, 1000))
def test_any_bytes_server(wire: bytes, seed: int) -> None:
    server = ServerSide()
    server.initiate()
    try:
        for chunk in random_chunks(wire, seed):
            server.receive_data(chunk)
            server.notify_modemstate(ModemState(seed & 0xFF))
    except ProtocolError:
        pass
    assert server.buffered <= MAX_SUBNEGOTIATION


@settings(max_examples=300, deadline=None)
@given(wire=WIRE, seed=st.integers(0, 1000))
def test_any_bytes_client(wire: bytes, seed: int) -> None:
    client = ClientSide()
    client.initiate(0.0)
    client.request(Command.SET_BAUDRATE, 9600, 0.0)
    client.request(Command.SET_MODEMSTATE_MASK, 255, 0.0)
    try:
        for i, chunk in enumerate(random_chunks(wire, seed)):
            client.receive_data(chunk, float(i))
            client.handle_timer(float(i))
    except ProtocolError:
        pass
    assert client.buffered <= MAX_SUBNEGOTIATION


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=3000), seed=st.integers(0, 1000))
def test_data_round_trip_both_ways(payload: bytes, seed: int) -> None:
    client, server = active_client(), active_server()
    client.send_data(payload)
    server.send_data(payload)
    got_server = [server.receive_data(chunk) for chunk in random_chunks(client.data_to_send(), seed)]
    got_client = [client.receive_data(chunk, 0.0) for chunk in random_chunks(server.data_to_send(), seed + 1)]
    for got in (got_server, got_client):
        events = [e for batch in got for e in batch]
        assert all(isinstance(e, Data) for e in events)
        assert b"".join(e.data for e in events if isinstance(e, Data)) == payload


def test_long_random_feed_keeps_memory_bounded() -> None:
    rng = random.Random(11)
    pieces = [
        b"\xff\xfa\x2c",
        b"\xff\xf0",
        b"\xff\xff",
        b"\xff\xfd\x2c",
        b"\xff\xfb\x18",
        b"\x01\x00",
        b"\xff",
    ]
    client = ClientSide()
    client.initiate(0.0)
    for i in range(3000):
        wire = b"".join(rng.choice(pieces) if rng.random() < 0.5 else rng.randbytes(8) for _ in range(50))
        client.request(Command(rng.choice([1, 2, 3, 5, 6, 7, 10, 11, 12])), rng.randrange(256), float(i))
        try:
            client.receive_data(wire, float(i))
        except ProtocolError:
            client = ClientSide()
            client.initiate(float(i))
        client.data_to_send()
        assert client.buffered <= MAX_SUBNEGOTIATION
        assert sum(len(q) for q in client._pending.values()) <= MAX_PENDING_PER_COMMAND * len(Command)


def test_protocol_error_is_terminal() -> None:
    server = active_server()
    with pytest.raises(ProtocolError):
        server.receive_data(b"\xff\xfa\x2c" + b"\x00" * (MAX_SUBNEGOTIATION + 1))
    with pytest.raises(ProtocolError):
        server.receive_data(b"hello")


def test_decode_speed_one_mebibyte(capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(5)
    payload = rng.randbytes(1 << 20)
    server = active_server()
    server.send_data(payload)
    wire = server.data_to_send()
    client = active_client()
    start = time.perf_counter()
    events = client.receive_data(wire, 0.0)
    elapsed = time.perf_counter() - start
    assert events == [Data(data=payload)]
    with capsys.disabled():
        print(f"\n  rfc2217 decode: 1 MiB, {payload.count(0xFF)} escaped 0xFF, {elapsed * 1000:.1f} ms")


def test_server_reports_modem_state_to_a_client_that_never_sent_will() -> None:
    """pyserial 3.5 can skip its WILL COM-PORT (its reader thread sees our DO first) and go straight
    to commands; the first NOTIFY-MODEMSTATE must still go out, or its ``.cts`` raises."""
    server = ServerSide(modem_state=ModemState.CTS | ModemState.DSR)
    server.initiate()
    server.data_to_send()
    events = server.receive_data(b"\xff\xfd\x2c" + sb(1, b"\x00\x00\x25\x80"))  # DO COM-PORT, SET-BAUDRATE
    assert any(isinstance(e, ComPortActive) for e in events)
    assert b"\xff\xfa\x2c\x6b\x30\xff\xf0" in server.data_to_send()
    assert server.active
