"""Serial line settings and status bits shared by every layer.

The enum values are the RFC 2217 wire values (RFC 2217, "SET-PARITY", "SET-STOPSIZE", "NOTIFY-MODEMSTATE"),
so the protocol engine can put them on the wire unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace


class Parity(enum.IntEnum):
    NONE = 1
    ODD = 2
    EVEN = 3
    MARK = 4
    SPACE = 5

    @property
    def letter(self) -> str:
        """pyserial's one-letter name (``N``, ``O``, ``E``, ``M``, ``S``)."""
        return self.name[0]

    @classmethod
    def from_letter(cls, letter: str) -> Parity:
        for item in cls:
            if item.name[0] == letter.upper()[:1]:
                return item
        raise ValueError(f"unknown parity {letter!r} (use N, E, O, M or S)")


class StopBits(enum.IntEnum):
    ONE = 1
    TWO = 2
    ONE_POINT_FIVE = 3

    @property
    def count(self) -> float:
        return {StopBits.ONE: 1.0, StopBits.TWO: 2.0, StopBits.ONE_POINT_FIVE: 1.5}[self]

    @classmethod
    def from_count(cls, count: float) -> StopBits:
        for item in cls:
            if item.count == float(count):
                return item
        raise ValueError(f"unknown stop bits {count!r} (use 1, 1.5 or 2)")


class FlowControl(enum.Enum):
    NONE = "none"
    XONXOFF = "xonxoff"
    RTSCTS = "rtscts"


class ModemState(enum.IntFlag):
    """UART modem status register bits as carried by NOTIFY-MODEMSTATE."""

    DELTA_CTS = 0x01
    DELTA_DSR = 0x02
    TRAILING_EDGE_RI = 0x04
    DELTA_CD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    CD = 0x80

    @classmethod
    def lines(cls) -> ModemState:
        return cls.CTS | cls.DSR | cls.RI | cls.CD

    def describe(self) -> str:
        """``CTS on, DSR on, RI off, CD on`` (the delta bits are left out)."""
        return ", ".join(
            f"{line.name} {'on' if self & line else 'off'}" for line in (self.CTS, self.DSR, self.RI, self.CD)
        )


# Which delta bit reports a change of which line, either way (RFC 2217, NOTIFY-MODEMSTATE). RI is the
# exception: only its trailing edge, the end of a ring, is reported (TRAILING-EDGE-RI), as a 16550's MSR does.
_DELTA_OF_LINE = (
    (ModemState.CTS, ModemState.DELTA_CTS),
    (ModemState.DSR, ModemState.DELTA_DSR),
    (ModemState.CD, ModemState.DELTA_CD),
)


def delta_bits(old: ModemState, new: ModemState) -> ModemState:
    """The NOTIFY-MODEMSTATE delta bits for the modem lines going from ``old`` to ``new`` (only their line
    bits count). The one place these bits are computed: the device poll, ``sim:echo`` and the RFC 2217
    server engine all use it."""
    changed = old ^ new
    bits = ModemState(0)
    for line, delta in _DELTA_OF_LINE:
        if changed & line:
            bits |= delta
    if old & ModemState.RI and not new & ModemState.RI:
        bits |= ModemState.TRAILING_EDGE_RI
    return bits


def modem_delta(old: ModemState | None, new: ModemState) -> ModemState | None:
    """``new`` with the delta bits against ``old``; ``None`` when nothing changed. The first reading
    (``old`` is ``None``) is ``new`` as it is: there is nothing to compare it with."""
    if old is None:
        return new
    if old == new:
        return None
    return new | delta_bits(old, new)


class LineState(enum.IntFlag):
    """UART line status register bits as carried by NOTIFY-LINESTATE."""

    DATA_READY = 0x01
    OVERRUN_ERROR = 0x02
    PARITY_ERROR = 0x04
    FRAMING_ERROR = 0x08
    BREAK_DETECT = 0x10
    TRANSFER_HOLDING_EMPTY = 0x20
    TRANSFER_SHIFT_EMPTY = 0x40
    TIMEOUT_ERROR = 0x80


VALID_DATASIZES = (5, 6, 7, 8)


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialSettings:
    """The framing of a serial line. ``baudrate`` is in bits per second."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: Parity = Parity.NONE
    stopbits: StopBits = StopBits.ONE
    flow: FlowControl = FlowControl.NONE

    def __post_init__(self) -> None:
        if not 0 < self.baudrate < 2**32:
            raise ValueError(f"baud rate {self.baudrate} is out of range")
        if self.bytesize not in VALID_DATASIZES:
            raise ValueError(f"data bits {self.bytesize} is not one of 5, 6, 7, 8")

    def with_changes(
        self,
        *,
        baudrate: int | None = None,
        bytesize: int | None = None,
        parity: Parity | None = None,
        stopbits: StopBits | None = None,
        flow: FlowControl | None = None,
    ) -> SerialSettings:
        """A copy with the given fields replaced (``None`` keeps the current value)."""
        return replace(
            self,
            baudrate=self.baudrate if baudrate is None else baudrate,
            bytesize=self.bytesize if bytesize is None else bytesize,
            parity=self.parity if parity is None else parity,
            stopbits=self.stopbits if stopbits is None else stopbits,
            flow=self.flow if flow is None else flow,
        )

    def describe(self) -> str:
        """``115200 8N1`` style summary."""
        stop = f"{self.stopbits.count:g}"
        flow = "" if self.flow is FlowControl.NONE else f" {self.flow.value}"
        return f"{self.baudrate} {self.bytesize}{self.parity.letter}{stop}{flow}"
