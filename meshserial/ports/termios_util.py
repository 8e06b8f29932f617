"""Linux termios helpers shared by the device and PTY backends.

Reads the line settings that are really in force on a tty (including custom rates, which plain
``tcgetattr`` reports only as the speed code ``BOTHER``: the rate itself is in ``struct termios2``,
read with ``TCGETS2``) and sets a baud rate through ``TCSETS2``. On a PTY master the kernel applies
every termios ioctl to the slave, so the same helpers read and write the application's view of a
virtual port.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from dataclasses import dataclass

from meshserial.proto.settings import FlowControl, Parity, SerialSettings, StopBits

# Not exported by Python's termios module. In a PTY slave's local flags it makes every tcsetattr of the
# application raise TIOCPKT_IOCTL on the master (see pty.py).
EXTPROC = 0o200000
# asm-generic/termbits.h; TCGETS2/TCSETS2 carry ``struct termios2`` (44 bytes: four tcflag_t, c_line,
# c_cc[19], c_ispeed at offset 36, c_ospeed at 40).
BOTHER = 0o010000
CBAUD = 0o010017
CMSPAR = 0o10000000000
TCGETS2 = 0x802C542A
TCSETS2 = 0x402C542B
_TERMIOS2 = struct.Struct("=4IB19BII")
_CBAUD_SHIFT_IBAUD = 16  # IBSHIFT: the input speed field is the output field shifted by 16

_CODE_TO_RATE: dict[int, int] = {}
_RATE_TO_CODE: dict[int, int] = {}
for _name in dir(termios):
    if _name.startswith("B") and _name[1:].isdigit():
        _CODE_TO_RATE[getattr(termios, _name)] = int(_name[1:])
        _RATE_TO_CODE[int(_name[1:])] = getattr(termios, _name)


@dataclass(frozen=True, slots=True, kw_only=True)
class LineView:
    """What termios says about a tty; ``bytesize``/``parity`` are meaningless on a PTY (the kernel
    forces a PTY to 8 data bits without parity, whatever the application asked for)."""

    baudrate: int
    bytesize: int
    parity: Parity
    stopbits: StopBits
    flow: FlowControl
    lflag: int

    def merge_into(self, base: SerialSettings, *, framing: bool) -> SerialSettings:
        """``base`` with the observed fields; data bits and parity only when ``framing`` is trusted."""
        return base.with_changes(
            baudrate=self.baudrate if self.baudrate > 0 else None,
            bytesize=self.bytesize if framing else None,
            parity=self.parity if framing else None,
            stopbits=self.stopbits,
            flow=self.flow,
        )


def read_custom_baud(fd: int) -> int:
    """The output speed from ``TCGETS2`` (raises ``OSError``)."""
    raw = fcntl.ioctl(fd, TCGETS2, bytes(_TERMIOS2.size))
    fields = _TERMIOS2.unpack(raw)
    return int(fields[-1])


def read_line(fd: int) -> LineView:
    """Decode the termios of ``fd`` (raises ``termios.error`` / ``OSError``)."""
    iflag, _oflag, cflag, lflag, _ispeed, ospeed, _cc = termios.tcgetattr(fd)
    code = cflag & CBAUD
    if BOTHER in (code, ospeed):
        try:
            baud = read_custom_baud(fd)
        except OSError:
            baud = 0
    else:
        baud = _CODE_TO_RATE.get(ospeed, 0)
    size = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}[cflag & termios.CSIZE]
    if not cflag & termios.PARENB:
        parity = Parity.NONE
    elif cflag & CMSPAR:
        parity = Parity.MARK if cflag & termios.PARODD else Parity.SPACE
    else:
        parity = Parity.ODD if cflag & termios.PARODD else Parity.EVEN
    if cflag & termios.CRTSCTS:
        flow = FlowControl.RTSCTS
    elif iflag & (termios.IXON | termios.IXOFF):
        flow = FlowControl.XONXOFF
    else:
        flow = FlowControl.NONE
    return LineView(
        baudrate=baud,
        bytesize=size,
        parity=parity,
        stopbits=StopBits.TWO if cflag & termios.CSTOPB else StopBits.ONE,
        flow=flow,
        lflag=lflag,
    )


def set_baud(fd: int, baud: int) -> None:
    """Set input and output speed of ``fd`` (standard code via ``tcsetattr``, else ``TCSETS2``)."""
    code = _RATE_TO_CODE.get(baud)
    if code is not None:
        attrs = termios.tcgetattr(fd)
        attrs[2] = (attrs[2] & ~CBAUD) | code
        attrs[4] = attrs[5] = code
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        return
    raw = fcntl.ioctl(fd, TCGETS2, bytes(_TERMIOS2.size))
    fields = list(_TERMIOS2.unpack(raw))
    fields[2] = (
        (fields[2] & ~(CBAUD | (CBAUD << _CBAUD_SHIFT_IBAUD))) | BOTHER | (BOTHER << _CBAUD_SHIFT_IBAUD)
    )
    fields[-2] = fields[-1] = baud
    fcntl.ioctl(fd, TCSETS2, _TERMIOS2.pack(*fields))


def make_raw(fd: int, *, extproc: bool) -> None:
    """``cfmakeraw`` on ``fd``, optionally with ``EXTPROC`` so a PTY master hears every tcsetattr."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    if extproc:
        lflag |= EXTPROC
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


def set_packet_mode(master: int) -> None:
    """Put a PTY master in ``TIOCPKT`` packet mode: each read then returns a 0 byte and data, or one
    status byte (flush, stop/start, termios changed), several events possibly coalesced in it."""
    fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
