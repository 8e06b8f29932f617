"""RFC 2217 (Telnet Com Port Control Option) engines for both roles, sans-IO.

Theory of operation
-------------------
Both engines wrap one :class:`~meshserial.proto.telnet.TelnetCodec` and speak COM-PORT-OPTION (44)
sub-negotiations ``IAC SB 44 <code> <value> IAC SE`` on top of it. Client commands use codes 0-12;
the server answers, and notifies, with code + 100 (RFC 2217, "Com Port Configuration"). Bytes go in
through ``receive_data``, events come out, and ``data_to_send`` drains what must be written.

:class:`ServerSide` (the access server: it owns the real port)

* ``initiate`` offers WILL SGA, DO SGA, WILL ECHO, DO BINARY, WILL BINARY, DO COM-PORT, the opening
  ser2net uses; a client's DO COM-PORT is answered WILL (PortManager style; ser2net answers WONT,
  clients do not care).
* The session is *active* once the client uses COM-PORT-OPTION: its WILL, its DO, or a first
  command (pyserial 3.5 sometimes never sends its WILL). At that moment the engine emits
  :class:`ComPortActive` and sends one NOTIFY-MODEMSTATE whatever the mask says (0 if the lines are
  not known yet): the RFC's "only if non-zero" rule would otherwise leave a client with all lines low
  without any report, and pyserial then raises on ``.cts``.
* SET-BAUDRATE/DATASIZE/PARITY/STOPSIZE/CONTROL and PURGE-DATA become :class:`Request` events; the
  application applies them and must call :meth:`ServerSide.reply` with the value in use (every
  client command must be acknowledged, or pyserial waits its 3 s timeout and fails).
* Everything else is answered inside the engine: SIGNATURE (with ours), the masks (stored, acked
  110/111 + mask), client NOTIFY polls (a pyserial invention, answered from the cached state),
  FLOWCONTROL-SUSPEND/RESUME (a flag the data pump reads through :attr:`ServerSide.output_suspended`).

:class:`ClientSide` (speaks to ser2net, PortManager, hub4com or our own server)

* ``initiate`` sends WILL COM-PORT, WILL/DO BINARY, WILL/DO SGA. DO COM-PORT means active
  (:class:`ComPortActive`), DONT COM-PORT means "not an RFC 2217 server" (:class:`ComPortRefused`).
  WILL/WONT COM-PORT from the server is tolerated.
* :meth:`ClientSide.request` queues a command. Until the server's DO arrives it is held (the RFC
  allows commands only after WILL was answered by DO) and sent, in request order, when it does.
  Each command waits for an ack matched by code, first in first out per code; an ack carrying
  another value is still an ack (the RFC says it reports "the value in use") and comes out as
  ``Reply(solicited=True)``. Server messages nobody asked for are ``Reply(solicited=False)``.
  Unanswered commands become :class:`ReplyTimeout` after ``reply_timeout`` via
  ``get_timer``/``handle_timer``; the session goes on.
* FLOWCONTROL-SUSPEND is only sent when enabled (ser2net reads it as "disable flow control").

Peer quirks handled (see docs/protocol.md, part 1): ser2net 4.3 acks a mask with a NOTIFY; sredird
acks baud with 8 bytes; ser2net switches to one-byte Cisco baud codes after a short SET-BAUDRATE;
ser2net sends acks to every client of a port; PortManager sends WILL COM-PORT.

Bounds: the Telnet layer caps sub-negotiations, the client keeps at most
:data:`MAX_PENDING_PER_COMMAND` unanswered commands per code (the oldest is forgotten beyond that),
and malformed-but-survivable input becomes :class:`Notice`, never an exception other than
:class:`~meshserial.errors.ProtocolError`.

Deliberately unsupported: acting on one-byte Telnet commands other than BRK and NOP, NVT CR/NUL
translation, resending unacknowledged commands (the caller sees :class:`ReplyTimeout` and decides).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import assert_never

from meshserial.errors import UsageError
from meshserial.proto import telnet
from meshserial.proto.comport import (
    _BAUD_TO_CISCO,
    _LINES,
    _MAX_CODE,
    _REQUESTS,
    MAX_PENDING_PER_COMMAND,
    MAX_SIGNATURE,
    SERVER_OFFSET,
    BreakReceived,
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
    SignatureReceived,
    _decode_baud,
    _decode_byte,
    _encode_value,
    _Engine,
    _validate_signature,
)
from meshserial.proto.settings import LineState, ModemState, delta_bits
from meshserial.proto.telnet import BINARY, COM_PORT_OPTION, ECHO, SGA, Side

__all__ = [
    "MAX_PENDING_PER_COMMAND",
    "MAX_SIGNATURE",
    "SERVER_OFFSET",
    "BreakReceived",
    "ClientSide",
    "ComPortActive",
    "ComPortRefused",
    "Command",
    "Control",
    "Data",
    "Event",
    "FlowResume",
    "FlowSuspend",
    "Notice",
    "Purge",
    "Reply",
    "ReplyTimeout",
    "Request",
    "ServerSide",
    "SignatureReceived",
]


# ---- server ----------------------------------------------------------------------------------------


class ServerSide(_Engine):
    """The access-server role: the client configures our port."""

    def __init__(self, *, signature: bytes = b"meshserial", modem_state: ModemState | None = None) -> None:
        super().__init__(
            local_options=frozenset({BINARY, ECHO, SGA, COM_PORT_OPTION}),
            remote_options=frozenset({BINARY, SGA, COM_PORT_OPTION}),
        )
        self._signature = _validate_signature(signature)
        self._lines = None if modem_state is None else modem_state & _LINES
        self._linestate: LineState | None = None
        # RFC 2217, SET-LINESTATE-MASK / SET-MODEMSTATE-MASK: initial masks are 0 and 255.
        self._line_mask = 0
        self._modem_mask = 255
        # ser2net-compatible: a one-byte SET-BAUDRATE switches the session to Cisco codes.
        self._cisco_baud = False
        self._com_port_in_use = False

    def initiate(self) -> None:
        """Queue the opening offers (gensio's order, minus its contradictory DONT ECHO)."""
        for side, option in (
            (Side.LOCAL, SGA),
            (Side.REMOTE, SGA),
            (Side.LOCAL, ECHO),  # only so interactive telnet clients stop echoing locally
            (Side.REMOTE, BINARY),
            (Side.LOCAL, BINARY),
            (Side.REMOTE, COM_PORT_OPTION),
        ):
            self._telnet.request(side, option, True)

    @property
    def active(self) -> bool:
        """The client uses COM-PORT-OPTION: it sent WILL, or DO, or a COM-PORT command.

        pyserial 3.5 races with itself: if our DO arrives before its own WILL has gone out, it marks
        the option active and never sends WILL, yet goes on with commands. PortManager and ser2net
        treat either direction as agreement; so do we, or such a client never gets its first
        NOTIFY-MODEMSTATE (and its ``.cts`` raises)."""
        return self._com_port_in_use

    def _activate(self, events: list[Event]) -> None:
        if self._com_port_in_use:
            return
        self._com_port_in_use = True
        events.append(ComPortActive())
        # Unconditional first report (ser2net and PortManager do it; pyserial needs it).
        self._send_sb(SERVER_OFFSET + Command.NOTIFY_MODEMSTATE, self._masked_lines())

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse client bytes; raises :class:`~meshserial.errors.ProtocolError` on a malformed stream."""
        events, tevents = self._telnet_events(data)
        for tev in tevents:
            if self._common(tev, events):
                continue
            match tev:
                case telnet.Subnegotiation(payload=payload):
                    self._activate(events)
                    self._command(payload, events)
                case telnet.OptionChanged(option=telnet.COM_PORT_OPTION, enabled=enabled):
                    if enabled:
                        self._activate(events)
                    elif tev.side is Side.REMOTE:
                        self._com_port_in_use = False  # no more notifications until it is used again
                        events.append(Notice(reason="client withdrew COM-PORT-OPTION"))
                case _:
                    pass  # other option changes need no action
        return events

    def _masked_lines(self) -> bytes:
        return bytes(((self._lines or 0) & self._modem_mask,))

    def _command(self, payload: bytes, events: list[Event]) -> None:
        # Commands are processed even before WILL arrived: pyserial sends them after a DONT too, and
        # answering costs nothing.
        if not payload:
            events.append(Notice(reason="empty COM-PORT-OPTION sub-negotiation"))
            return
        code, value = payload[0], payload[1:]
        if code > _MAX_CODE:
            events.append(Notice(reason=f"unknown COM-PORT-OPTION command {code}"))
            return
        command = Command(code)
        match command:
            case Command.SIGNATURE:
                # RFC 2217: empty text asks for ours. Text is the client's; ser2net answers that with
                # its own signature too, which doubles as the acknowledgement the RFC asks for.
                if value:
                    events.append(SignatureReceived(text=value))
                self._send_sb(SERVER_OFFSET + Command.SIGNATURE, self._signature)
            case Command.SET_BAUDRATE:
                baud, cisco = _decode_baud(value, events)
                if baud is not None:
                    self._cisco_baud = self._cisco_baud or cisco
                    if len(value) > 4:
                        events.append(Notice(reason=f"SET-BAUDRATE with {len(value)} value bytes"))
                    events.append(Request(command=command, value=baud))
            case (
                Command.SET_DATASIZE
                | Command.SET_PARITY
                | Command.SET_STOPSIZE
                | Command.SET_CONTROL
                | Command.PURGE_DATA
            ):
                byte = _decode_byte(command, value, events)
                if byte is not None:
                    events.append(Request(command=command, value=byte))
            case Command.NOTIFY_LINESTATE:
                # A pyserial "poll"; RFC 2217 defines 6 only server-to-client. Answer with what we know.
                self._send_sb(SERVER_OFFSET + command, bytes((self._linestate or 0,)))
            case Command.NOTIFY_MODEMSTATE:
                self._send_sb(SERVER_OFFSET + command, bytes((self._lines or 0,)))
            case Command.FLOWCONTROL_SUSPEND | Command.FLOWCONTROL_RESUME:
                # RFC 2217, FLOWCONTROL-SUSPEND: the client cannot take more data; not acknowledged
                # (an "ack" 108 would tell the client to stop instead).
                self._flow(command is Command.FLOWCONTROL_SUSPEND, events)
            case Command.SET_LINESTATE_MASK | Command.SET_MODEMSTATE_MASK:
                byte = _decode_byte(command, value, events)
                if byte is not None:
                    if command is Command.SET_LINESTATE_MASK:
                        self._line_mask = byte
                    else:
                        self._modem_mask = byte
                    self._send_sb(SERVER_OFFSET + command, bytes((byte,)))
            case _:
                assert_never(command)

    def reply(self, command: Command, value: int) -> None:
        """Acknowledge a :class:`Request` with the value now in use (RFC 2217: "the value in use, which
        may be different than the value requested")."""
        if command not in _REQUESTS:
            raise UsageError(f"{command.name} is answered by the protocol engine, not by reply()")
        if command is Command.SET_BAUDRATE and self._cisco_baud and value in _BAUD_TO_CISCO:
            payload = bytes((_BAUD_TO_CISCO[value],))
        else:
            payload = _encode_value(command, value)
        self._send_sb(SERVER_OFFSET + command, payload)

    def notify_modemstate(self, state: ModemState, *, force: bool = False) -> None:
        """Report the modem lines (RFC 2217, NOTIFY-MODEMSTATE): delta bits are computed against the
        last call, the client's mask applied, and a message sent if anything survives (or ``force``).
        Delta bits already set in ``state`` are kept. Only cached while COM-PORT is not agreed."""
        lines = state & _LINES
        previous = self._lines or ModemState(0)
        changed = lines ^ previous
        deltas = (state & ~_LINES) | delta_bits(previous, lines)
        self._lines = lines
        if not self.active:
            return
        report = (lines | deltas) & self._modem_mask
        # "On every change … if the result is non-zero" — a repeated identical poll is not a change.
        if force or ((changed or deltas) and report):
            self._send_sb(SERVER_OFFSET + Command.NOTIFY_MODEMSTATE, bytes((report,)))

    def notify_linestate(self, state: LineState) -> None:
        """Report line-status events (RFC 2217, NOTIFY-LINESTATE) through the client's mask, which
        starts at 0 (nothing). Each call is one report: errors are events, not levels."""
        self._linestate = state
        report = state & self._line_mask
        if self.active and report:
            self._send_sb(SERVER_OFFSET + Command.NOTIFY_LINESTATE, bytes((report,)))


# ---- client ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    seq: int
    command: Command
    value: int
    payload: bytes
    deadline: float
    sent: bool


class ClientSide(_Engine):
    """The client role: we configure a remote port."""

    def __init__(
        self, *, signature: bytes = b"meshserial", reply_timeout: float = 3.0, send_flow_suspend: bool = False
    ) -> None:
        super().__init__(
            local_options=frozenset({BINARY, SGA, COM_PORT_OPTION}),
            # COM-PORT: PortManager offers WILL; agreeing is harmless. ECHO: every server offers it.
            remote_options=frozenset({BINARY, SGA, ECHO, COM_PORT_OPTION}),
        )
        self._signature = _validate_signature(signature)
        self._timeout = reply_timeout
        self._send_flow_suspend = send_flow_suspend
        self._pending: dict[Command, deque[_Pending]] = {}
        self._seq = 0
        self._modem: ModemState | None = None

    def initiate(self, now: float) -> None:
        """Queue WILL COM-PORT, WILL BINARY, DO BINARY, WILL SGA, DO SGA."""
        del now  # nothing is timed until a command is sent
        for side, option in (
            (Side.LOCAL, COM_PORT_OPTION),
            (Side.LOCAL, BINARY),
            (Side.REMOTE, BINARY),
            (Side.LOCAL, SGA),
            (Side.REMOTE, SGA),
        ):
            self._telnet.request(side, option, True)

    @property
    def active(self) -> bool:
        """The server answered DO COM-PORT-OPTION."""
        return self._telnet.enabled(Side.LOCAL, COM_PORT_OPTION)

    @property
    def modem_state(self) -> ModemState | None:
        """Modem lines from the last NOTIFY-MODEMSTATE (delta bits removed); ``None`` before the first."""
        return self._modem

    # ---- commands ------------------------------------------------------------------------------------

    def request(self, command: Command, value: int, now: float) -> None:
        """Queue a COM-PORT-OPTION command and expect its ack within ``reply_timeout``.

        SIGNATURE asks for the server's signature; NOTIFY-LINESTATE/MODEMSTATE are sent as empty
        polls (pyserial's extension); FLOWCONTROL-SUSPEND/RESUME are sent only with
        ``send_flow_suspend`` and only while active, and expect no ack.
        """
        if command is Command.SIGNATURE:
            self.request_signature(now)
            return
        if command in (Command.FLOWCONTROL_SUSPEND, Command.FLOWCONTROL_RESUME):
            # ser2net (up to today's gensio) takes a client's FLOWCONTROL-SUSPEND for "SET-CONTROL 1"
            # and switches the device's hardware flow control off, and RESUME for a flow query.
            if self._send_flow_suspend and self.active:
                self._send_sb(command)
            return
        self._track(command, value, _encode_value(command, value), now)

    def request_signature(self, now: float) -> None:
        """Ask for the server's signature (empty SIGNATURE). PortManager and hub4com never answer."""
        self._track(Command.SIGNATURE, 0, b"", now)

    def send_break(self) -> None:
        """Queue ``IAC BRK``: only ser2net acts on it; SET-CONTROL 5/6 works everywhere."""
        self._telnet.send_command(telnet.BRK)

    def _track(self, command: Command, value: int, payload: bytes, now: float) -> None:
        self._seq += 1
        entry = _Pending(self._seq, command, value, payload, now + self._timeout, sent=False)
        queue = self._pending.setdefault(command, deque(maxlen=MAX_PENDING_PER_COMMAND))
        queue.append(entry)  # a full deque forgets its oldest entry: the table stays bounded
        if self.active:
            self._send_pending(entry, now)

    def _send_pending(self, entry: _Pending, now: float) -> None:
        self._send_sb(entry.command, entry.payload)
        entry.sent = True
        entry.deadline = now + self._timeout

    def _flush_held(self, now: float) -> None:
        held = [entry for queue in self._pending.values() for entry in queue if not entry.sent]
        # Request order matters: RFC 2217 recommends baud, data size, parity, stop size.
        for entry in sorted(held, key=lambda e: e.seq):
            self._send_pending(entry, now)

    def _match(self, command: Command) -> _Pending | None:
        """Pop the oldest sent command of this code (acks arrive in order per code)."""
        queue = self._pending.get(command)
        if queue and queue[0].sent:
            entry = queue.popleft()
            if not queue:
                del self._pending[command]  # an empty table keeps get_timer cheap on the data path
            return entry
        return None

    def get_timer(self) -> float | None:
        """Earliest reply deadline, or ``None``."""
        if not self._pending:
            return None  # the usual case: asked after every write
        return min(entry.deadline for queue in self._pending.values() for entry in queue)

    def handle_timer(self, now: float) -> list[Event]:
        """Expire commands whose deadline passed, as :class:`ReplyTimeout` events in request order."""
        expired: list[_Pending] = []
        for command, queue in self._pending.items():
            keep = [entry for entry in queue if entry.deadline > now]
            if len(keep) != len(queue):
                expired.extend(entry for entry in queue if entry.deadline <= now)
                self._pending[command] = deque(keep, maxlen=MAX_PENDING_PER_COMMAND)
        for command in [c for c, queue in self._pending.items() if not queue]:
            del self._pending[command]
        expired.sort(key=lambda e: e.seq)
        return [ReplyTimeout(command=entry.command, value=entry.value) for entry in expired]

    # ---- input ---------------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Parse server bytes; raises :class:`~meshserial.errors.ProtocolError` on a malformed stream."""
        events, tevents = self._telnet_events(data)
        for tev in tevents:
            if self._common(tev, events):
                continue
            match tev:
                case telnet.Subnegotiation(payload=payload):
                    self._server_message(payload, events)
                case telnet.OptionChanged(option=telnet.COM_PORT_OPTION, side=Side.LOCAL, enabled=enabled):
                    if enabled:
                        events.append(ComPortActive())
                        self._flush_held(now)
                    else:
                        events.append(ComPortRefused())
                case _:
                    pass  # BINARY/SGA/ECHO settle without consequences; WONT COM-PORT is expected
        return events

    def _server_message(self, payload: bytes, events: list[Event]) -> None:
        if not payload:
            events.append(Notice(reason="empty COM-PORT-OPTION sub-negotiation"))
            return
        code, value = payload[0], payload[1:]
        if not SERVER_OFFSET <= code <= SERVER_OFFSET + _MAX_CODE:
            events.append(Notice(reason=f"unexpected COM-PORT-OPTION code {code} from the server"))
            return
        command = Command(code - SERVER_OFFSET)
        match command:
            case Command.SIGNATURE:
                if value:
                    self._match(Command.SIGNATURE)
                    events.append(SignatureReceived(text=value))
                else:
                    # The server asks for ours (RFC 2217, SIGNATURE).
                    self._send_sb(Command.SIGNATURE, self._signature)
            case Command.SET_BAUDRATE:
                baud, _cisco = _decode_baud(value, events)
                if baud is not None:
                    self._ack(command, baud, events)
            case Command.FLOWCONTROL_SUSPEND | Command.FLOWCONTROL_RESUME:
                self._flow(command is Command.FLOWCONTROL_SUSPEND, events)
            case Command.NOTIFY_LINESTATE | Command.NOTIFY_MODEMSTATE:
                byte = _decode_byte(command, value, events)
                if byte is None:
                    return
                first_report = False
                if command is Command.NOTIFY_MODEMSTATE:
                    first_report = self._modem is None
                    self._modem = ModemState(byte) & _LINES
                if self._ack(command, byte, events) or first_report:
                    # The answer to our poll, or the unsolicited report every server but hub4com sends
                    # right after agreeing COM-PORT, which must not settle a mask request.
                    return
                # ser2net 4.3 answers SET-*-MASK with a NOTIFY (106/107, the state through the new
                # mask) instead of 110/111 + mask; later versions send both. So let the notification
                # also settle the oldest pending mask request, with the value we asked for.
                mask = (
                    Command.SET_MODEMSTATE_MASK
                    if command is Command.NOTIFY_MODEMSTATE
                    else Command.SET_LINESTATE_MASK
                )
                if (entry := self._match(mask)) is not None:
                    events.append(Reply(command=mask, value=entry.value, solicited=True))
            case (
                Command.SET_DATASIZE
                | Command.SET_PARITY
                | Command.SET_STOPSIZE
                | Command.SET_CONTROL
                | Command.SET_LINESTATE_MASK
                | Command.SET_MODEMSTATE_MASK
                | Command.PURGE_DATA
            ):
                byte = _decode_byte(command, value, events)
                if byte is not None:
                    self._ack(command, byte, events)
            case _:
                assert_never(command)

    def _ack(self, command: Command, value: int, events: list[Event]) -> bool:
        solicited = self._match(command) is not None
        events.append(Reply(command=command, value=value, solicited=solicited))
        return solicited
