"""COM-PORT-OPTION (RFC 2217) vocabulary shared by both engines, sans-IO.

Command codes and values, the events the engines emit, how values are put on the wire and read back
(including the peer quirks of value encoding), and the Telnet plumbing common to
:class:`~meshserial.proto.rfc2217.ServerSide` and :class:`~meshserial.proto.rfc2217.ClientSide`.
Import these names from :mod:`meshserial.proto.rfc2217`, which re-exports them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshserial.errors import UsageError
from meshserial.proto import telnet
from meshserial.proto.settings import ModemState
from meshserial.proto.telnet import COM_PORT_OPTION


class Command(enum.IntEnum):
    """Client-to-server COM-PORT-OPTION command codes (RFC 2217); server replies use code + 100."""

    SIGNATURE = 0
    SET_BAUDRATE = 1
    SET_DATASIZE = 2
    SET_PARITY = 3
    SET_STOPSIZE = 4
    SET_CONTROL = 5
    NOTIFY_LINESTATE = 6
    NOTIFY_MODEMSTATE = 7
    FLOWCONTROL_SUSPEND = 8
    FLOWCONTROL_RESUME = 9
    SET_LINESTATE_MASK = 10
    SET_MODEMSTATE_MASK = 11
    PURGE_DATA = 12


SERVER_OFFSET = 100


class Control(enum.IntEnum):
    """SET-CONTROL values (RFC 2217)."""

    FLOW_QUERY = 0
    FLOW_NONE = 1
    FLOW_XONXOFF = 2
    FLOW_HARDWARE = 3
    BREAK_QUERY = 4
    BREAK_ON = 5
    BREAK_OFF = 6
    DTR_QUERY = 7
    DTR_ON = 8
    DTR_OFF = 9
    RTS_QUERY = 10
    RTS_ON = 11
    RTS_OFF = 12
    INFLOW_QUERY = 13
    INFLOW_NONE = 14
    INFLOW_XONXOFF = 15
    INFLOW_HARDWARE = 16
    FLOW_DCD = 17
    INFLOW_DTR = 18
    FLOW_DSR = 19


class Purge(enum.IntEnum):
    RX = 1  # access server receive buffer: data from the device not yet sent to the client
    TX = 2  # access server transmit buffer: data from the client not yet written to the device
    BOTH = 3


# ---- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """Serial payload, already un-escaped."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ComPortActive:
    """COM-PORT-OPTION is agreed (server: the client sent WILL; client: the server sent DO)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ComPortRefused:
    """Client side: the server sent DONT COM-PORT-OPTION; it is not an RFC 2217 server."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """Server side: the client asks for a setting the application must apply, then answer with
    :meth:`ServerSide.reply`. Only SET-BAUDRATE/DATASIZE/PARITY/STOPSIZE/CONTROL and PURGE-DATA
    surface as requests; ``value`` 0 means "query" for the first four (not for PURGE-DATA)."""

    command: Command
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Client side: a server message with code ``command + 100``: an acknowledgement (``solicited``) or
    an unsolicited notification / ack (NOTIFY-*, another client's change on ser2net)."""

    command: Command
    value: int
    solicited: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyTimeout:
    """Client side: no acknowledgement for ``command``/``value`` within the reply timeout. The
    session goes on; the caller decides whether that matters."""

    command: Command
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SignatureReceived:
    """The peer sent its signature text."""

    text: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSuspend:
    """The peer asked us to stop sending data (FLOWCONTROL-SUSPEND)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowResume:
    """The peer allows data again (FLOWCONTROL-RESUME)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakReceived:
    """Telnet ``IAC BRK`` (ser2net turns this into a BREAK on the line)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """Something odd but survivable from the peer (bad value length, unknown command); for logs."""

    reason: str


Event = (
    Data
    | ComPortActive
    | ComPortRefused
    | Request
    | Reply
    | ReplyTimeout
    | SignatureReceived
    | FlowSuspend
    | FlowResume
    | BreakReceived
    | Notice
)

# ---- wire helpers --------------------------------------------------------------------------------

MAX_SIGNATURE = 128
"""Longest signature we send. gensio keeps only 31 bytes of an SB, so ser2net truncates longer ones."""

MAX_PENDING_PER_COMMAND = 16
"""Unacknowledged commands remembered per command code; the oldest is forgotten beyond this."""

# Cisco IOS one-byte baud codes, as auto-detected by ser2net (gensio ``cisco_baud_rates[]``).
_CISCO_TO_BAUD = {
    3: 300, 4: 600, 5: 1200, 6: 2400, 7: 4800, 8: 9600,
    10: 19200, 12: 38400, 13: 57600, 14: 115200, 15: 230400,
}  # fmt: skip
_BAUD_TO_CISCO = {baud: code for code, baud in _CISCO_TO_BAUD.items()}

# Commands whose value is one byte; SET-BAUDRATE is four; the rest carry none.
_ONE_BYTE = frozenset(
    {
        Command.SET_DATASIZE,
        Command.SET_PARITY,
        Command.SET_STOPSIZE,
        Command.SET_CONTROL,
        Command.SET_LINESTATE_MASK,
        Command.SET_MODEMSTATE_MASK,
        Command.PURGE_DATA,
    }
)
_REQUESTS = frozenset(
    {
        Command.SET_BAUDRATE,
        Command.SET_DATASIZE,
        Command.SET_PARITY,
        Command.SET_STOPSIZE,
        Command.SET_CONTROL,
        Command.PURGE_DATA,
    }
)
_LINES = ModemState.lines()
_MAX_CODE = max(Command)


def _encode_value(command: Command, value: int) -> bytes:
    """The value bytes of ``command`` (RFC 2217: baud is 4 bytes in network order, others 1 byte)."""
    if command is Command.SET_BAUDRATE:
        if not 0 <= value < 2**32:
            raise UsageError(f"baud rate {value} does not fit RFC 2217's 32 bits")
        return value.to_bytes(4, "big")
    if command in _ONE_BYTE:
        if not 0 <= value <= 255:
            raise UsageError(f"{command.name} value {value} is not a byte")
        return bytes((value,))
    return b""


def _decode_byte(command: Command, value: bytes, events: list[Event]) -> int | None:
    """First byte of a one-byte value; lenient about extra bytes, ``None`` when there is none."""
    if not value:
        events.append(Notice(reason=f"{command.name} without a value"))
        return None
    if len(value) > 1:
        events.append(Notice(reason=f"{command.name} with {len(value)} value bytes, using the first"))
    return value[0]


def _decode_baud(value: bytes, events: list[Event]) -> tuple[int | None, bool]:
    """(baud, was_cisco). Four bytes per RFC; longer acks (sredird sends 8) start with the rate; one
    byte is a Cisco IOS code: ser2net takes a SET-BAUDRATE with fewer than four value bytes for one, and
    from then on acknowledges every baud rate of that session as a one-byte code too."""
    if len(value) >= 4:
        return int.from_bytes(value[:4], "big"), False
    if len(value) == 1 and value[0] in _CISCO_TO_BAUD:
        return _CISCO_TO_BAUD[value[0]], True
    events.append(Notice(reason=f"SET-BAUDRATE with unusable value {value.hex()}"))
    return None, False


def _validate_signature(signature: bytes) -> bytes:
    # An empty signature on the wire means "send me yours" (RFC 2217, SIGNATURE): two meshserial
    # peers would answer each other forever.
    if not signature or len(signature) > MAX_SIGNATURE:
        raise UsageError(f"signature must be 1..{MAX_SIGNATURE} bytes")
    return bytes(signature)


class _Engine:
    """What both roles share: the Telnet codec and COM-PORT-OPTION framing."""

    def __init__(self, *, local_options: frozenset[int], remote_options: frozenset[int]) -> None:
        self._telnet = telnet.TelnetCodec(local_options=local_options, remote_options=remote_options)
        self._suspended = False

    def _send_sb(self, code: int, value: bytes = b"") -> None:
        self._telnet.send_subnegotiation(COM_PORT_OPTION, bytes((code,)) + value)

    def send_data(self, data: bytes) -> None:
        """Queue serial payload (0xFF is escaped)."""
        self._telnet.send_data(data)

    def data_to_send(self) -> bytes:
        """Drain queued output (``b""`` if none)."""
        return self._telnet.data_to_send()

    @property
    def output_suspended(self) -> bool:
        """The peer sent FLOWCONTROL-SUSPEND and no RESUME yet: stop sending data."""
        return self._suspended

    @property
    def buffered(self) -> int:
        """Bytes the parser holds between calls (bounded by the sub-negotiation cap)."""
        return self._telnet.buffered

    def _flow(self, suspend: bool, events: list[Event]) -> None:
        if suspend != self._suspended:
            self._suspended = suspend
            events.append(FlowSuspend() if suspend else FlowResume())

    def _telnet_events(self, data: bytes) -> tuple[list[Event], list[telnet.TelnetEvent]]:
        """Parse; a lone data event (the hot path) is mapped here, anything else goes back to the role."""
        tevents = self._telnet.receive_data(data)
        if len(tevents) == 1 and isinstance(tevents[0], telnet.TelnetData):
            return [Data(data=tevents[0].data)], []  # the hot path: nothing else to look at
        return [], tevents

    def _common(self, tev: telnet.TelnetEvent, events: list[Event]) -> bool:
        """Handle events both roles treat alike; False if the role must look at it."""
        match tev:
            case telnet.TelnetData(data=data):
                events.append(Data(data=data))
            case telnet.TelnetCommand(code=code):
                # RFC 854: BRK is "break or attention"; ser2net answers it with a BREAK on the line.
                # NOP is hub4com's keepalive; the rest make no sense on a serial link.
                if code == telnet.BRK:
                    events.append(BreakReceived())
            case telnet.Anomaly(reason=reason):
                events.append(Notice(reason=reason))
            case telnet.Subnegotiation(option=option) if option != COM_PORT_OPTION:
                events.append(Notice(reason=f"sub-negotiation for option {option} ignored"))
            case _:
                return False
        return True
