"""RFC 2217 requests to port actions and acknowledgements (``proto.portcontrol``), table-driven, and the
NOTIFY-MODEMSTATE delta bits a port's line changes become (``proto.settings``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from meshserial.proto.portcontrol import (
    FLOW_CONTROL,
    INFLOW_CONTROL,
    NO_CHANGE,
    Configure,
    Fixed,
    InUse,
    NoChange,
    NotCarried,
    Plan,
    PortState,
    PurgeData,
    SetLines,
    Setting,
    describe_request,
    plan_request,
)
from meshserial.proto.rfc2217 import Command, Control, Purge
from meshserial.proto.settings import (
    FlowControl,
    ModemState,
    Parity,
    SerialSettings,
    StopBits,
    delta_bits,
    modem_delta,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Caps:
    """Stands in for ``ports.base.Capabilities`` (proto tests import nothing above proto)."""

    baudrate: bool = True
    bytesize: bool = True
    parity: bool = True
    stopbits: bool = True
    flow: bool = True


ALL = Caps()
NONE = Caps(baudrate=False, bytesize=False, parity=False, stopbits=False, flow=False)
HOLDER, WATCHER = True, False
BOTH = None  # the compatibility echo makes no difference to this row

S = SerialSettings(
    baudrate=9600, bytesize=8, parity=Parity.NONE, stopbits=StopBits.ONE, flow=FlowControl.NONE
)
# Two ports as a request finds them: A with DTR on, RTS and BREAK off, no flow control; B the opposite.
A = PortState(settings=S, dtr=True, rts=False, break_=False, capabilities=ALL)
B = PortState(
    settings=S.with_changes(flow=FlowControl.RTSCTS), dtr=False, rts=True, break_=True, capabilities=ALL
)
# What a device that could not do what was asked uses instead.
ELSE = SerialSettings(
    baudrate=4800, bytesize=7, parity=Parity.EVEN, stopbits=StopBits.TWO, flow=FlowControl.XONXOFF
)


def fixed(value: int) -> Plan:
    return Plan(action=NO_CHANGE, ack=Fixed(value=value))


def change(setting: Setting, value: int, echo: bool, **fields: object) -> Plan:
    """Configure ``S`` with ``fields``; answer from ``setting`` in use, or ``value`` with the echo."""
    return Plan(
        action=Configure(settings=S.with_changes(**fields), setting=setting),  # type: ignore[arg-type]
        ack=InUse(setting=setting, asked=value, echo=echo, warn=setting is not Setting.FLOW),
    )


def refrain(setting: Setting, value: int, echo: bool) -> Plan:
    return Plan(
        action=NotCarried(setting=setting),
        ack=InUse(setting=setting, asked=value, echo=echo, warn=setting is not Setting.FLOW),
    )


def lines(value: Control, **change: bool) -> Plan:
    return Plan(action=SetLines(**change), ack=Fixed(value=value))


def purge(value: Purge, *, rx: bool, tx: bool) -> Plan:
    return Plan(action=PurgeData(rx=rx, tx=tx), ack=Fixed(value=value))


# (command, value, writable, capabilities, compat echo or BOTH, port, expected plan)
Row = tuple[Command, int, bool, Caps, bool | None, PortState, Plan]
C = Command
X = Control
P, SB = Parity, StopBits

# fmt: off
FRAMING: list[Row] = [
    # SET-BAUDRATE: 0 asks; any other 32-bit value is a rate to try.
    (C.SET_BAUDRATE, 0, HOLDER, ALL, BOTH, A, fixed(9600)),
    (C.SET_BAUDRATE, 0, WATCHER, ALL, BOTH, A, fixed(9600)),
    (C.SET_BAUDRATE, 115200, HOLDER, ALL, True, A, change(Setting.BAUDRATE, 115200, True, baudrate=115200)),
    (C.SET_BAUDRATE, 115200, HOLDER, ALL, False, A, change(Setting.BAUDRATE, 115200, False, baudrate=115200)),
    (C.SET_BAUDRATE, 115200, HOLDER, NONE, True, A, refrain(Setting.BAUDRATE, 115200, True)),
    (C.SET_BAUDRATE, 115200, HOLDER, NONE, False, A, refrain(Setting.BAUDRATE, 115200, False)),
    (C.SET_BAUDRATE, 115200, WATCHER, ALL, BOTH, A, fixed(9600)),
    (C.SET_BAUDRATE, 115200, WATCHER, NONE, BOTH, A, fixed(9600)),
    (C.SET_BAUDRATE, 2**32, HOLDER, ALL, True, A, fixed(2**32)),  # beyond RFC 2217's 32 bits
    (C.SET_BAUDRATE, 2**32, HOLDER, ALL, False, A, fixed(9600)),
    (C.SET_BAUDRATE, 2**32, WATCHER, ALL, BOTH, A, fixed(9600)),
    # SET-DATASIZE: 5 to 8.
    (C.SET_DATASIZE, 0, HOLDER, ALL, BOTH, A, fixed(8)),
    (C.SET_DATASIZE, 0, WATCHER, NONE, BOTH, A, fixed(8)),
    (C.SET_DATASIZE, 7, HOLDER, ALL, True, A, change(Setting.BYTESIZE, 7, True, bytesize=7)),
    (C.SET_DATASIZE, 5, HOLDER, ALL, False, A, change(Setting.BYTESIZE, 5, False, bytesize=5)),
    (C.SET_DATASIZE, 7, HOLDER, NONE, True, A, refrain(Setting.BYTESIZE, 7, True)),
    (C.SET_DATASIZE, 7, HOLDER, NONE, False, A, refrain(Setting.BYTESIZE, 7, False)),
    (C.SET_DATASIZE, 7, WATCHER, ALL, BOTH, A, fixed(8)),
    (C.SET_DATASIZE, 9, HOLDER, ALL, True, A, fixed(9)),
    (C.SET_DATASIZE, 9, HOLDER, NONE, False, A, fixed(8)),
    (C.SET_DATASIZE, 4, HOLDER, ALL, True, A, fixed(4)),
    (C.SET_DATASIZE, 9, WATCHER, ALL, BOTH, A, fixed(8)),
    # SET-PARITY: 1 NONE ... 5 SPACE.
    (C.SET_PARITY, 0, HOLDER, ALL, BOTH, A, fixed(P.NONE)),
    (C.SET_PARITY, 0, WATCHER, ALL, BOTH, A, fixed(P.NONE)),
    (C.SET_PARITY, P.EVEN, HOLDER, ALL, True, A, change(Setting.PARITY, P.EVEN, True, parity=P.EVEN)),
    (C.SET_PARITY, P.SPACE, HOLDER, ALL, False, A, change(Setting.PARITY, P.SPACE, False, parity=P.SPACE)),
    (C.SET_PARITY, P.ODD, HOLDER, NONE, True, A, refrain(Setting.PARITY, P.ODD, True)),
    (C.SET_PARITY, P.ODD, WATCHER, ALL, BOTH, A, fixed(P.NONE)),
    (C.SET_PARITY, 6, HOLDER, ALL, True, A, fixed(6)),
    (C.SET_PARITY, 6, HOLDER, ALL, False, A, fixed(P.NONE)),
    (C.SET_PARITY, 6, WATCHER, ALL, BOTH, A, fixed(P.NONE)),
    # SET-STOPSIZE: 1 one, 2 two, 3 one and a half.
    (C.SET_STOPSIZE, 0, HOLDER, ALL, BOTH, A, fixed(SB.ONE)),
    (C.SET_STOPSIZE, 0, WATCHER, ALL, BOTH, A, fixed(SB.ONE)),
    (C.SET_STOPSIZE, 3, HOLDER, ALL, True, A, change(Setting.STOPBITS, 3, True, stopbits=SB.ONE_POINT_FIVE)),
    (C.SET_STOPSIZE, 2, HOLDER, ALL, False, A, change(Setting.STOPBITS, 2, False, stopbits=SB.TWO)),
    (C.SET_STOPSIZE, 2, HOLDER, NONE, False, A, refrain(Setting.STOPBITS, 2, False)),
    (C.SET_STOPSIZE, 2, WATCHER, NONE, BOTH, A, fixed(SB.ONE)),
    (C.SET_STOPSIZE, 4, HOLDER, ALL, True, A, fixed(4)),
    (C.SET_STOPSIZE, 4, HOLDER, ALL, False, A, fixed(SB.ONE)),
    (C.SET_STOPSIZE, 4, WATCHER, ALL, BOTH, A, fixed(SB.ONE)),
]

FLOWS = ((X.FLOW_NONE, FlowControl.NONE), (X.FLOW_XONXOFF, FlowControl.XONXOFF),
         (X.FLOW_HARDWARE, FlowControl.RTSCTS))
ECHOED = (X.INFLOW_NONE, X.INFLOW_XONXOFF, X.INFLOW_HARDWARE, X.FLOW_DCD, X.INFLOW_DTR, X.FLOW_DSR)

CONTROL: list[Row] = [
    # Outbound flow control: a setting like the framing ones (but a mismatch does not warn).
    (C.SET_CONTROL, X.FLOW_QUERY, HOLDER, ALL, BOTH, A, fixed(X.FLOW_NONE)),
    (C.SET_CONTROL, X.FLOW_QUERY, WATCHER, ALL, BOTH, B, fixed(X.FLOW_HARDWARE)),
    *((C.SET_CONTROL, value, HOLDER, ALL, echo, A, change(Setting.FLOW, value, echo, flow=flow))
      for (value, flow), echo in itertools.product(FLOWS, (True, False))),
    (C.SET_CONTROL, X.FLOW_HARDWARE, HOLDER, NONE, True, A, refrain(Setting.FLOW, X.FLOW_HARDWARE, True)),
    (C.SET_CONTROL, X.FLOW_XONXOFF, HOLDER, NONE, False, A, refrain(Setting.FLOW, X.FLOW_XONXOFF, False)),
    (C.SET_CONTROL, X.FLOW_HARDWARE, WATCHER, ALL, BOTH, A, fixed(X.FLOW_NONE)),
    (C.SET_CONTROL, X.FLOW_NONE, WATCHER, ALL, BOTH, B, fixed(X.FLOW_HARDWARE)),
    # Inbound flow control reports what the outbound kind implies; setting it is only echoed, as is
    # DCD/DSR/DTR flow control.
    (C.SET_CONTROL, X.INFLOW_QUERY, HOLDER, ALL, BOTH, A, fixed(X.INFLOW_NONE)),
    (C.SET_CONTROL, X.INFLOW_QUERY, WATCHER, ALL, BOTH, B, fixed(X.INFLOW_HARDWARE)),
    *((C.SET_CONTROL, value, who, caps, BOTH, port, fixed(value))
      for value in ECHOED for who, caps, port in ((HOLDER, ALL, A), (WATCHER, NONE, B))),
    # The output lines: the holder drives them (a port without them ignores that and still reports
    # them as set, so the answer is the value asked for); a watcher is told how they are.
    (C.SET_CONTROL, X.BREAK_QUERY, HOLDER, ALL, BOTH, A, fixed(X.BREAK_OFF)),
    (C.SET_CONTROL, X.BREAK_QUERY, WATCHER, ALL, BOTH, B, fixed(X.BREAK_ON)),
    (C.SET_CONTROL, X.BREAK_ON, HOLDER, ALL, BOTH, A, lines(X.BREAK_ON, break_=True)),
    (C.SET_CONTROL, X.BREAK_OFF, HOLDER, NONE, BOTH, B, lines(X.BREAK_OFF, break_=False)),
    (C.SET_CONTROL, X.BREAK_ON, WATCHER, ALL, BOTH, A, fixed(X.BREAK_OFF)),
    (C.SET_CONTROL, X.BREAK_OFF, WATCHER, ALL, BOTH, B, fixed(X.BREAK_ON)),
    (C.SET_CONTROL, X.DTR_QUERY, HOLDER, ALL, BOTH, A, fixed(X.DTR_ON)),
    (C.SET_CONTROL, X.DTR_QUERY, WATCHER, ALL, BOTH, B, fixed(X.DTR_OFF)),
    (C.SET_CONTROL, X.DTR_ON, HOLDER, NONE, BOTH, B, lines(X.DTR_ON, dtr=True)),
    (C.SET_CONTROL, X.DTR_OFF, HOLDER, ALL, BOTH, A, lines(X.DTR_OFF, dtr=False)),
    (C.SET_CONTROL, X.DTR_OFF, WATCHER, ALL, BOTH, A, fixed(X.DTR_ON)),
    (C.SET_CONTROL, X.DTR_ON, WATCHER, ALL, BOTH, B, fixed(X.DTR_OFF)),
    (C.SET_CONTROL, X.RTS_QUERY, HOLDER, ALL, BOTH, A, fixed(X.RTS_OFF)),
    (C.SET_CONTROL, X.RTS_QUERY, WATCHER, ALL, BOTH, B, fixed(X.RTS_ON)),
    (C.SET_CONTROL, X.RTS_ON, HOLDER, ALL, BOTH, A, lines(X.RTS_ON, rts=True)),
    (C.SET_CONTROL, X.RTS_OFF, HOLDER, NONE, BOTH, B, lines(X.RTS_OFF, rts=False)),
    (C.SET_CONTROL, X.RTS_ON, WATCHER, ALL, BOTH, A, fixed(X.RTS_OFF)),
    (C.SET_CONTROL, X.RTS_OFF, WATCHER, ALL, BOTH, B, fixed(X.RTS_ON)),
    # Not a SET-CONTROL value RFC 2217 defines: echoed, to anyone.
    (C.SET_CONTROL, 20, HOLDER, ALL, BOTH, A, fixed(20)),
    (C.SET_CONTROL, 255, WATCHER, ALL, BOTH, B, fixed(255)),
]

ENGINE_ANSWERS = (C.SIGNATURE, C.NOTIFY_LINESTATE, C.NOTIFY_MODEMSTATE, C.FLOWCONTROL_SUSPEND,
                  C.FLOWCONTROL_RESUME, C.SET_LINESTATE_MASK, C.SET_MODEMSTATE_MASK)

OTHERS: list[Row] = [
    (C.PURGE_DATA, Purge.RX, HOLDER, ALL, BOTH, A, purge(Purge.RX, rx=True, tx=False)),
    (C.PURGE_DATA, Purge.TX, HOLDER, NONE, BOTH, A, purge(Purge.TX, rx=False, tx=True)),
    (C.PURGE_DATA, Purge.BOTH, HOLDER, ALL, BOTH, A, purge(Purge.BOTH, rx=True, tx=True)),
    *((C.PURGE_DATA, value, WATCHER, ALL, BOTH, A, fixed(value)) for value in Purge),
    (C.PURGE_DATA, 0, HOLDER, ALL, BOTH, A, fixed(0)),
    (C.PURGE_DATA, 4, HOLDER, ALL, BOTH, A, fixed(4)),
    (C.PURGE_DATA, 255, WATCHER, ALL, BOTH, A, fixed(255)),
    # The engine answers these itself; should one come this way, it is echoed and changes nothing.
    *((command, 7, who, ALL, BOTH, A, fixed(7)) for command in ENGINE_ANSWERS for who in (HOLDER, WATCHER)),
]
# fmt: on


def _params(rows: list[Row]) -> list[object]:
    out: list[object] = []
    for row in rows:
        command, value, writable, caps, echo, _, _ = row
        for compat in (True, False) if echo is None else (echo,):
            who = "holder" if writable else "watcher"
            can = "capable" if caps == ALL else "incapable"
            label = f"{command.name}-{value}-{who}-{can}-{'echo' if compat else 'in-use'}"
            out.append(pytest.param(row, compat, id=label))
    return out


@pytest.mark.parametrize(("row", "echo"), _params(FRAMING + CONTROL + OTHERS))
def test_plan(row: Row, echo: bool) -> None:
    command, value, writable, caps, _, port, expected = row
    state = PortState(
        settings=port.settings, dtr=port.dtr, rts=port.rts, break_=port.break_, capabilities=caps
    )
    assert plan_request(command, value, writable=writable, port=state, compat_echo=echo) == expected


def test_every_command_and_value_has_a_plan_and_watchers_change_nothing() -> None:
    """Whatever a client sends, there is a plan, never an exception; a watcher's plan changes nothing and
    is answered with what a query would be; only a capable port is configured."""
    values = [*range(256), 2**16, 2**32 - 1, 2**32]
    for command, value, caps, echo, port in itertools.product(
        Command, values, (ALL, NONE), (True, False), (A, B)
    ):
        state = PortState(
            settings=port.settings, dtr=port.dtr, rts=port.rts, break_=port.break_, capabilities=caps
        )
        held = plan_request(command, value, writable=True, port=state, compat_echo=echo)
        watched = plan_request(command, value, writable=False, port=state, compat_echo=echo)
        assert watched.action == NO_CHANGE
        assert isinstance(watched.ack, Fixed)
        if isinstance(held.action, Configure):
            assert held.action.setting.carried_by(caps)
        if isinstance(held.action, NotCarried):
            assert not held.action.setting.carried_by(caps)
        if command in (Command.SET_BAUDRATE, Command.SET_DATASIZE, Command.SET_PARITY, Command.SET_STOPSIZE):
            query = plan_request(command, 0, writable=True, port=state, compat_echo=echo)
            assert watched.answer(ELSE) == query.answer(ELSE)
        assert isinstance(held.answer(state.settings), int)


# ---- the acknowledgement from what the port then uses --------------------------------------------------

ASKED_BAUD = S.with_changes(baudrate=115200)


@pytest.mark.parametrize(
    ("ack", "used", "answer", "unmet"),
    [
        (Fixed(value=5), ELSE, 5, None),
        (Fixed(value=5), S, 5, None),
        # The compatibility echo: the value asked for, whatever the device does; the log says what it uses.
        (InUse(setting=Setting.BAUDRATE, asked=115200, echo=True, warn=True), ASKED_BAUD, 115200, None),
        (InUse(setting=Setting.BAUDRATE, asked=115200, echo=True, warn=True), ELSE, 115200, 4800),
        # RFC 2217 to the letter: the value in use.
        (InUse(setting=Setting.BAUDRATE, asked=115200, echo=False, warn=True), ASKED_BAUD, 115200, None),
        (InUse(setting=Setting.BAUDRATE, asked=115200, echo=False, warn=True), ELSE, 4800, 4800),
        (InUse(setting=Setting.BYTESIZE, asked=5, echo=False, warn=True), ELSE, 7, 7),
        (InUse(setting=Setting.PARITY, asked=Parity.MARK, echo=False, warn=True), ELSE, Parity.EVEN, 3),
        (InUse(setting=Setting.STOPBITS, asked=3, echo=True, warn=True), ELSE, 3, StopBits.TWO),
        # Flow control answers alike, but a different kind in use is not warned about.
        (InUse(setting=Setting.FLOW, asked=Control.FLOW_HARDWARE, echo=False, warn=False), ELSE, 2, None),
        (InUse(setting=Setting.FLOW, asked=Control.FLOW_HARDWARE, echo=True, warn=False), ELSE, 3, None),
    ],
)
def test_answer_from_the_settings_in_use(
    ack: Fixed | InUse, used: SerialSettings, answer: int, unmet: int | None
) -> None:
    for action in (NO_CHANGE, NotCarried(setting=Setting.BAUDRATE)):
        plan = Plan(action=action, ack=ack)
        assert plan.answer(used) == answer
        assert plan.unmet(used) == unmet


@pytest.mark.parametrize(
    ("setting", "in_use", "lacking"),
    [
        (Setting.BAUDRATE, 4800, Caps(baudrate=False)),
        (Setting.BYTESIZE, 7, Caps(bytesize=False)),
        (Setting.PARITY, Parity.EVEN, Caps(parity=False)),
        (Setting.STOPBITS, StopBits.TWO, Caps(stopbits=False)),
        (Setting.FLOW, Control.FLOW_XONXOFF, Caps(flow=False)),
    ],
)
def test_setting_value_and_capability(setting: Setting, in_use: int, lacking: Caps) -> None:
    assert setting.value_in(ELSE) == in_use
    assert setting.carried_by(ALL)
    assert not setting.carried_by(lacking)
    applied = setting.applied(in_use, S)
    assert applied is not None and setting.value_in(applied) == in_use


def test_flow_tables_name_rfc2217_values() -> None:
    assert {flow: int(value) for flow, value in FLOW_CONTROL.items()} == {
        FlowControl.NONE: 1,
        FlowControl.XONXOFF: 2,
        FlowControl.RTSCTS: 3,
    }
    assert {flow: int(value) for flow, value in INFLOW_CONTROL.items()} == {
        FlowControl.NONE: 14,
        FlowControl.XONXOFF: 15,
        FlowControl.RTSCTS: 16,
    }
    assert Setting.FLOW.applied(Control.INFLOW_NONE, S) is None  # only outbound values select a kind
    assert isinstance(NO_CHANGE, NoChange)


# ---- the log line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "value", "words"),
    [
        (Command.SET_BAUDRATE, 115200, "baud 115200"),
        (Command.SET_BAUDRATE, 0, None),
        (Command.SET_DATASIZE, 7, "data bits 7"),
        (Command.SET_DATASIZE, 0, None),
        (Command.SET_PARITY, 3, "parity 3"),
        (Command.SET_STOPSIZE, 2, "stop bits 2"),
        (Command.SET_CONTROL, Control.FLOW_NONE, "flow control none"),
        (Command.SET_CONTROL, Control.FLOW_XONXOFF, "flow control XON/XOFF"),
        (Command.SET_CONTROL, Control.FLOW_HARDWARE, "flow control RTS/CTS"),
        (Command.SET_CONTROL, Control.BREAK_ON, "BREAK on"),
        (Command.SET_CONTROL, Control.BREAK_OFF, "BREAK off"),
        (Command.SET_CONTROL, Control.DTR_ON, "DTR on"),
        (Command.SET_CONTROL, Control.DTR_OFF, "DTR off"),
        (Command.SET_CONTROL, Control.RTS_ON, "RTS on"),
        (Command.SET_CONTROL, Control.RTS_OFF, "RTS off"),
        (Command.SET_CONTROL, Control.FLOW_QUERY, None),
        (Command.SET_CONTROL, Control.INFLOW_NONE, None),
        (Command.SET_CONTROL, 200, None),
        (Command.PURGE_DATA, Purge.RX, "purge received data"),
        (Command.PURGE_DATA, Purge.TX, "purge data to send"),
        (Command.PURGE_DATA, Purge.BOTH, "purge both ways"),
        (Command.PURGE_DATA, 0, None),
        (Command.SET_LINESTATE_MASK, 255, None),
        (Command.SIGNATURE, 0, None),
    ],
)
def test_describe_request(command: Command, value: int, words: str | None) -> None:
    assert describe_request(command, value) == words


# ---- modem-state delta bits ------------------------------------------------------------------------------

M = ModemState


@pytest.mark.parametrize(
    ("old", "new", "bits"),
    [
        (M(0), M(0), M(0)),
        (M.CTS, M.CTS, M(0)),
        (M(0), M.CTS, M.DELTA_CTS),
        (M.CTS, M(0), M.DELTA_CTS),
        (M(0), M.DSR, M.DELTA_DSR),
        (M.CD, M(0), M.DELTA_CD),
        (M(0), M.RI, M(0)),  # a ring starting is not reported, only its end
        (M.RI, M(0), M.TRAILING_EDGE_RI),
        (M.CTS | M.DSR | M.RI | M.CD, M(0), M.DELTA_CTS | M.DELTA_DSR | M.DELTA_CD | M.TRAILING_EDGE_RI),
        (M.CTS | M.DELTA_DSR, M.CTS, M(0)),  # delta bits already in the input do not count as lines
    ],
)
def test_delta_bits(old: ModemState, new: ModemState, bits: ModemState) -> None:
    assert delta_bits(old, new) == bits


@pytest.mark.parametrize(
    ("old", "new", "report"),
    [
        (None, M.CD, M.CD),  # the first reading: nothing to compare with
        (None, M(0), M(0)),
        (M.CTS | M.DSR, M.CTS | M.DSR, None),  # no change, no report
        (M.CTS, M.DSR, M.DSR | M.DELTA_CTS | M.DELTA_DSR),
        (M.RI | M.CD, M(0), M.TRAILING_EDGE_RI | M.DELTA_CD),
        (M(0), M.RI, M.RI),
    ],
)
def test_modem_delta(old: ModemState | None, new: ModemState, report: ModemState | None) -> None:
    assert modem_delta(old, new) == report
