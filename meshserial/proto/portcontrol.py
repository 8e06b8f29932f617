"""What an RFC 2217 request does to a shared port, and what it is answered, sans-IO.

A client configures the port it uses with SET-BAUDRATE, SET-DATASIZE, SET-PARITY, SET-STOPSIZE,
SET-CONTROL and PURGE-DATA, and RFC 2217 wants every one of them acknowledged (pyserial waits 3 s for
a missing answer, then fails). This module decides, for one request, what should happen to the port
and how the answer is made; it never touches the port. The adapter
(:meth:`meshserial.net.sharing.SharedPort.request`) takes a :class:`PortState` snapshot, asks
:func:`plan_request` for a :class:`Plan`, carries out its action, and answers with
:meth:`Plan.answer` of the settings the port then really uses.

The rules:

* Only the session holding the port (the one read-write session) changes anything. A watcher's request
  is answered with the value in use and never applied, so a client that insists sees at once that
  nothing changed.
* Value 0 of SET-BAUDRATE/DATASIZE/PARITY/STOPSIZE and the SET-CONTROL query values (0, 4, 7, 10, 13)
  ask for the value in use (RFC 2217).
* **The compatibility echo.** RFC 2217 has the server acknowledge with "the value in use, which may be
  different than the value requested". pyserial (and so esptool, miniterm and everything built on it)
  compares the answer with its request and raises "remote rejected value" on any other, where a local
  port would simply have accepted the request. So a setting the device cannot apply (a baud rate the
  UART lacks, 1.5 stop bits on Linux, a port without parity), and a value RFC 2217 does not define
  (data size 9, parity 6), is acknowledged with the value asked for when ``compat_echo`` is on (the
  default), and with the value in use when it is off; either way it is not applied. Both sides that
  answer RFC 2217 (``share`` and the local gateway of ``use --listen``) follow the same rule;
  ``docs/protocol.md`` states it for users.
* DTR, RTS and BREAK are handed to the port, which ignores them if it has no such lines but remembers
  them as set; that remembered state is what the port reports, so the answer is the value asked for.
* Inbound flow control (SET-CONTROL 14-16) and DCD/DSR/DTR flow control (17-19) are not configurable
  separately from outbound flow control here: they are echoed and applied to nothing, as are values
  RFC 2217 does not define.
* PURGE-DATA 1, 2 and 3 discard buffered data (the holder's only) and are echoed; anything else is
  echoed and ignored.

Inputs are plain values: the request, whether the asking session may write, a :class:`PortState`
snapshot and the ``compat_echo`` flag. Nothing here reads a clock, logs or raises for a client's value:
every request, however odd, gets a plan.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, assert_never

from meshserial.proto.comport import Command, Control, Purge
from meshserial.proto.settings import FlowControl, Parity, SerialSettings, StopBits

__all__ = [
    "FLOW_CONTROL",
    "INFLOW_CONTROL",
    "NO_CHANGE",
    "Ack",
    "Action",
    "Capable",
    "Configure",
    "Fixed",
    "InUse",
    "NoChange",
    "NotCarried",
    "Plan",
    "PortState",
    "PurgeData",
    "SetLines",
    "Setting",
    "describe_request",
    "plan_request",
]


#: The SET-CONTROL value that selects (and reports) each kind of outbound flow control.
FLOW_CONTROL: dict[FlowControl, Control] = {
    FlowControl.NONE: Control.FLOW_NONE,
    FlowControl.XONXOFF: Control.FLOW_XONXOFF,
    FlowControl.RTSCTS: Control.FLOW_HARDWARE,
}
#: The SET-CONTROL value that reports inbound flow control: here it always follows the outbound kind.
INFLOW_CONTROL: dict[FlowControl, Control] = {
    FlowControl.NONE: Control.INFLOW_NONE,
    FlowControl.XONXOFF: Control.INFLOW_XONXOFF,
    FlowControl.RTSCTS: Control.INFLOW_HARDWARE,
}
_FLOW_OF_CONTROL = {control: flow for flow, control in FLOW_CONTROL.items()}


class Setting(enum.Enum):
    """A line setting a request can change; the value is its name in log lines."""

    BAUDRATE = "baud"
    BYTESIZE = "data bits"
    PARITY = "parity"
    STOPBITS = "stop bits"
    FLOW = "flow control"

    def value_in(self, settings: SerialSettings) -> int:
        """This setting of ``settings`` as RFC 2217 puts it on the wire."""
        match self:
            case Setting.BAUDRATE:
                return settings.baudrate
            case Setting.BYTESIZE:
                return settings.bytesize
            case Setting.PARITY:
                return int(settings.parity)
            case Setting.STOPBITS:
                return int(settings.stopbits)
            case Setting.FLOW:
                return int(FLOW_CONTROL[settings.flow])
            case _:
                assert_never(self)

    def carried_by(self, capabilities: Capable) -> bool:
        match self:
            case Setting.BAUDRATE:
                return capabilities.baudrate
            case Setting.BYTESIZE:
                return capabilities.bytesize
            case Setting.PARITY:
                return capabilities.parity
            case Setting.STOPBITS:
                return capabilities.stopbits
            case Setting.FLOW:
                return capabilities.flow
            case _:
                assert_never(self)

    def applied(self, value: int, settings: SerialSettings) -> SerialSettings | None:
        """``settings`` with this setting at the RFC 2217 ``value``; ``None`` if RFC 2217 (or, for data
        bits, a UART) has no such value."""
        try:
            match self:
                case Setting.BAUDRATE:
                    return settings.with_changes(baudrate=value)
                case Setting.BYTESIZE:
                    return settings.with_changes(bytesize=value)
                case Setting.PARITY:
                    return settings.with_changes(parity=Parity(value))
                case Setting.STOPBITS:
                    return settings.with_changes(stopbits=StopBits(value))
                case Setting.FLOW:
                    return settings.with_changes(flow=_FLOW_OF_CONTROL[Control(value)])
                case _:
                    assert_never(self)
        except (ValueError, KeyError):
            return None


# The four framing requests and the setting each one is about.
_SETTING_OF_COMMAND = {
    Command.SET_BAUDRATE: Setting.BAUDRATE,
    Command.SET_DATASIZE: Setting.BYTESIZE,
    Command.SET_PARITY: Setting.PARITY,
    Command.SET_STOPSIZE: Setting.STOPBITS,
}


class Capable(Protocol):
    """Which settings a port can carry (:class:`meshserial.ports.base.Capabilities` is one)."""

    @property
    def baudrate(self) -> bool: ...
    @property
    def bytesize(self) -> bool: ...
    @property
    def parity(self) -> bool: ...
    @property
    def stopbits(self) -> bool: ...
    @property
    def flow(self) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PortState:
    """The port as a request finds it: settings in use, output lines as last set, capabilities."""

    settings: SerialSettings
    dtr: bool
    rts: bool
    break_: bool
    capabilities: Capable


# ---- actions: what to do to the port ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoChange:
    """Nothing to do: a query, a watcher's request, a value that is only echoed."""


NO_CHANGE = NoChange()


@dataclass(frozen=True, slots=True, kw_only=True)
class Configure:
    """Apply ``settings`` (the port returns what it really uses); ``setting`` is the one that changes."""

    settings: SerialSettings
    setting: Setting


@dataclass(frozen=True, slots=True, kw_only=True)
class NotCarried:
    """The port cannot carry ``setting``: apply nothing, acknowledge anyway (and say so in the log)."""

    setting: Setting


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLines:
    """Drive the output lines given; ``None`` leaves a line as it is (``Port.set_control``)."""

    dtr: bool | None = None
    rts: bool | None = None
    break_: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeData:
    """Discard buffered data: ``rx`` from the device towards the clients, ``tx`` towards the device."""

    rx: bool
    tx: bool


Action = NoChange | Configure | NotCarried | SetLines | PurgeData


# ---- acknowledgements: how the answer is made ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Fixed:
    """Answer ``value``, whatever the action did."""

    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class InUse:
    """Answer with ``setting`` as the port uses it after the action, or with ``asked`` when ``echo``
    (the compatibility echo). ``warn``: a device that uses something else than ``asked`` deserves a
    warning in the log (the framing settings; a flow-control answer has never warned)."""

    setting: Setting
    asked: int
    echo: bool
    warn: bool


Ack = Fixed | InUse


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What one request does (``action``) and how it is answered (``ack``)."""

    action: Action
    ack: Ack

    def answer(self, used: SerialSettings) -> int:
        """The acknowledgement, given the settings the port uses once the action is carried out."""
        ack = self.ack
        match ack:
            case Fixed(value=value):
                return value
            case InUse(setting=setting, asked=asked, echo=echo):
                return asked if echo else setting.value_in(used)
            case _:
                assert_never(ack)

    def unmet(self, used: SerialSettings) -> int | None:
        """The value the port uses when it is not the one asked for and that deserves a warning."""
        ack = self.ack
        if isinstance(ack, InUse) and ack.warn and (in_use := ack.setting.value_in(used)) != ack.asked:
            return in_use
        return None


def _fixed(value: int) -> Plan:
    return Plan(action=NO_CHANGE, ack=Fixed(value=int(value)))  # a plain int, also for enum members


def plan_request(command: Command, value: int, *, writable: bool, port: PortState, compat_echo: bool) -> Plan:
    """The plan for ``command`` with ``value`` from a session that may change the port (``writable``:
    it holds the port) or not (a watcher). See the module docstring for the rules."""
    match command:
        case Command.SET_BAUDRATE | Command.SET_DATASIZE | Command.SET_PARITY | Command.SET_STOPSIZE:
            return _plan_setting(_SETTING_OF_COMMAND[command], value, writable, port, compat_echo)
        case Command.SET_CONTROL:
            return _plan_control(value, writable, port, compat_echo)
        case Command.PURGE_DATA:
            try:
                purge = Purge(value)
            except ValueError:
                return _fixed(value)
            return Plan(action=_PURGES[purge] if writable else NO_CHANGE, ack=Fixed(value=value))
        case (
            Command.SIGNATURE
            | Command.NOTIFY_LINESTATE
            | Command.NOTIFY_MODEMSTATE
            | Command.FLOWCONTROL_SUSPEND
            | Command.FLOWCONTROL_RESUME
            | Command.SET_LINESTATE_MASK
            | Command.SET_MODEMSTATE_MASK
        ):
            # The protocol engine answers these itself; should one arrive here, echo it.
            return _fixed(value)
        case _:
            assert_never(command)


def _plan_setting(setting: Setting, value: int, writable: bool, port: PortState, echo: bool) -> Plan:
    in_use = setting.value_in(port.settings)
    if not value or not writable:
        return _fixed(in_use)  # a query (value 0), or a watcher
    wanted = setting.applied(value, port.settings)
    if wanted is None:
        return _fixed(value if echo else in_use)  # not a value RFC 2217 defines: nothing to apply
    action: Action = (
        Configure(settings=wanted, setting=setting)
        if setting.carried_by(port.capabilities)
        else NotCarried(setting=setting)
    )
    return Plan(
        action=action,
        ack=InUse(setting=setting, asked=value, echo=echo, warn=setting is not Setting.FLOW),
    )


# SET-CONTROL values that drive an output line, and how.
_LINE_CHANGES: dict[Control, SetLines] = {
    Control.BREAK_ON: SetLines(break_=True),
    Control.BREAK_OFF: SetLines(break_=False),
    Control.DTR_ON: SetLines(dtr=True),
    Control.DTR_OFF: SetLines(dtr=False),
    Control.RTS_ON: SetLines(rts=True),
    Control.RTS_OFF: SetLines(rts=False),
}

_PURGES: dict[Purge, PurgeData] = {
    Purge.RX: PurgeData(rx=True, tx=False),
    Purge.TX: PurgeData(rx=False, tx=True),
    Purge.BOTH: PurgeData(rx=True, tx=True),
}


def _line_in_use(control: Control, port: PortState) -> Control:
    """How SET-CONTROL reports the output line ``control`` asks about or changes."""
    match control:
        case Control.BREAK_QUERY | Control.BREAK_ON | Control.BREAK_OFF:
            return Control.BREAK_ON if port.break_ else Control.BREAK_OFF
        case Control.DTR_QUERY | Control.DTR_ON | Control.DTR_OFF:
            return Control.DTR_ON if port.dtr else Control.DTR_OFF
        case _:
            return Control.RTS_ON if port.rts else Control.RTS_OFF


def _plan_control(value: int, writable: bool, port: PortState, echo: bool) -> Plan:
    try:
        control = Control(value)
    except ValueError:
        return _fixed(value)  # not a SET-CONTROL value RFC 2217 defines: echo
    flow = port.settings.flow
    match control:
        case Control.FLOW_NONE | Control.FLOW_XONXOFF | Control.FLOW_HARDWARE:
            return _plan_setting(Setting.FLOW, value, writable, port, echo)
        case Control.FLOW_QUERY:
            return _fixed(FLOW_CONTROL[flow])
        case Control.INFLOW_QUERY:
            return _fixed(INFLOW_CONTROL[flow])
        case (
            Control.BREAK_ON
            | Control.BREAK_OFF
            | Control.DTR_ON
            | Control.DTR_OFF
            | Control.RTS_ON
            | Control.RTS_OFF
        ):
            if writable:
                return Plan(action=_LINE_CHANGES[control], ack=Fixed(value=value))
            return _fixed(_line_in_use(control, port))  # a watcher: the line as it is
        case Control.BREAK_QUERY | Control.DTR_QUERY | Control.RTS_QUERY:
            return _fixed(_line_in_use(control, port))
        case (
            Control.INFLOW_NONE
            | Control.INFLOW_XONXOFF
            | Control.INFLOW_HARDWARE
            | Control.FLOW_DCD
            | Control.INFLOW_DTR
            | Control.FLOW_DSR
        ):
            return _fixed(value)  # not configurable separately here: echo, whoever asks
        case _:
            assert_never(control)


# ---- the log line ------------------------------------------------------------------------------------

_CONTROL_WORDS: dict[Control, str] = {
    Control.FLOW_NONE: "flow control none",
    Control.FLOW_XONXOFF: "flow control XON/XOFF",
    Control.FLOW_HARDWARE: "flow control RTS/CTS",
    Control.BREAK_ON: "BREAK on",
    Control.BREAK_OFF: "BREAK off",
    Control.DTR_ON: "DTR on",
    Control.DTR_OFF: "DTR off",
    Control.RTS_ON: "RTS on",
    Control.RTS_OFF: "RTS off",
}
_PURGE_WORDS: dict[Purge, str] = {
    Purge.RX: "purge received data",
    Purge.TX: "purge data to send",
    Purge.BOTH: "purge both ways",
}


def describe_request(command: Command, value: int) -> str | None:
    """A change an RFC 2217 request asks for, in words; ``None`` for queries and anything else."""
    if (setting := _SETTING_OF_COMMAND.get(command)) is not None:
        return f"{setting.value} {value}" if value else None
    if command is Command.SET_CONTROL and value in _CONTROL_WORDS:
        return _CONTROL_WORDS[Control(value)]
    if command is Command.PURGE_DATA and value in _PURGE_WORDS:
        return _PURGE_WORDS[Purge(value)]
    return None
