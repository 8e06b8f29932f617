"""Serial settings: the RFC 2217 wire values, pyserial's names, validation and the summary line."""

from __future__ import annotations

import pytest

from meshserial.proto.settings import (
    VALID_DATASIZES,
    FlowControl,
    LineState,
    ModemState,
    Parity,
    SerialSettings,
    StopBits,
)


def test_wire_values_are_rfc2217s() -> None:
    # RFC 2217, SET-PARITY and SET-STOPSIZE (0 asks for the current value and is not a setting).
    assert [p.value for p in Parity] == [1, 2, 3, 4, 5]
    assert [(s.value, s.count) for s in StopBits] == [(1, 1.0), (2, 2.0), (3, 1.5)]
    assert int(ModemState.lines()) == 0xF0
    assert int(LineState.TIMEOUT_ERROR) == 0x80


@pytest.mark.parametrize("parity", list(Parity))
def test_parity_letters_round_trip(parity: Parity) -> None:
    assert parity.letter in "NOEMS"
    assert Parity.from_letter(parity.letter) is parity
    assert Parity.from_letter(parity.letter.lower()) is parity


@pytest.mark.parametrize("letter", ["", "X", "1", "ö"])
def test_unknown_parity_letter(letter: str) -> None:
    with pytest.raises(ValueError, match="unknown parity"):
        Parity.from_letter(letter)


@pytest.mark.parametrize("count", [1, 1.5, 2, 2.0])
def test_stop_bits_from_count(count: float) -> None:
    assert StopBits.from_count(count).count == count


@pytest.mark.parametrize("count", [0, 3, 1.25])
def test_unknown_stop_bits(count: float) -> None:
    with pytest.raises(ValueError, match="unknown stop bits"):
        StopBits.from_count(count)


def test_modem_state_description_leaves_out_the_deltas() -> None:
    state = ModemState.CTS | ModemState.CD | ModemState.DELTA_CTS | ModemState.DELTA_DSR
    assert state.describe() == "CTS on, DSR off, RI off, CD on"
    assert ModemState(0).describe() == "CTS off, DSR off, RI off, CD off"
    assert ModemState.lines().describe() == "CTS on, DSR on, RI on, CD on"


@pytest.mark.parametrize("baudrate", [1, 9600, 2**32 - 1])
def test_baud_rate_range(baudrate: int) -> None:
    assert SerialSettings(baudrate=baudrate).baudrate == baudrate


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"baudrate": 0}, "baud rate 0 is out of range"),
    ({"baudrate": -9600}, "out of range"),
    ({"baudrate": 2**32}, "out of range"),
    ({"bytesize": 4}, "data bits 4"),
    ({"bytesize": 9}, "data bits 9"),
])  # fmt: skip
def test_invalid_settings(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SerialSettings(**kwargs)  # type: ignore[arg-type]


def test_with_changes_replaces_only_what_is_given() -> None:
    base = SerialSettings()
    assert base.with_changes() == base
    changed = base.with_changes(
        baudrate=115200, bytesize=7, parity=Parity.EVEN, stopbits=StopBits.TWO, flow=FlowControl.RTSCTS
    )
    assert changed == SerialSettings(
        baudrate=115200, bytesize=7, parity=Parity.EVEN, stopbits=StopBits.TWO, flow=FlowControl.RTSCTS
    )
    assert changed.with_changes(parity=Parity.NONE) == SerialSettings(
        baudrate=115200, bytesize=7, stopbits=StopBits.TWO, flow=FlowControl.RTSCTS
    )
    with pytest.raises(ValueError):  # the copy is validated like any other
        base.with_changes(bytesize=10)
    assert set(VALID_DATASIZES) == {5, 6, 7, 8}


@pytest.mark.parametrize(("settings", "summary"), [
    (SerialSettings(), "9600 8N1"),
    (SerialSettings(baudrate=115200, bytesize=7, parity=Parity.EVEN, stopbits=StopBits.TWO), "115200 7E2"),
    (SerialSettings(parity=Parity.MARK, stopbits=StopBits.ONE_POINT_FIVE), "9600 8M1.5"),
    (SerialSettings(bytesize=5, parity=Parity.SPACE, flow=FlowControl.XONXOFF), "9600 5S1 xonxoff"),
    (SerialSettings(parity=Parity.ODD, flow=FlowControl.RTSCTS), "9600 8O1 rtscts"),
])  # fmt: skip
def test_describe(settings: SerialSettings, summary: str) -> None:
    assert settings.describe() == summary
