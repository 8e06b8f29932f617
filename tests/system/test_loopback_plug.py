"""``sim:echo`` behaves like a loopback plug, seen end to end by a peer we did not write: pyserial's
``rfc2217://`` client against ``meshserial share``, over real sockets on loopback.

The plug is wired TX to RX, RTS to CTS, DTR to DSR and CD, RI open. pyserial learns the modem lines only
from NOTIFY-MODEMSTATE, which the server sends after it has acknowledged the SET-CONTROL, so each check
polls pyserial's cached lines (no network traffic) until they settle, within a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import serial

from tests.helpers import free_tcp_port, meshserial, wait_for

pytestmark = [pytest.mark.system, pytest.mark.interop]

ALL_BYTES = bytes(range(256))
SETTLE = 5.0  # seconds for a NOTIFY-MODEMSTATE to reach pyserial


@pytest.fixture
def plug(ms_env: dict[str, str]) -> Iterator[serial.Serial]:
    """A pyserial client on ``sim:echo`` shared as ``loop`` over plain RFC 2217."""
    port = free_tcp_port()
    proc = meshserial("share", "sim:echo=loop", "--rfc2217", f"127.0.0.1:{port}", "--no-mdns", env=ms_env)
    try:
        proc.wait_line(r"sharing loop on rfc2217://127\.0\.0\.1:\d+")
        ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=115200, timeout=5)
        try:
            yield ser
        finally:
            ser.close()
    finally:
        assert proc.stop() in (0, -15), proc.stderr


def modem_lines(ser: serial.Serial) -> dict[str, bool]:
    return {"cts": ser.cts, "dsr": ser.dsr, "cd": ser.cd, "ri": ser.ri}


def expect_lines(ser: serial.Serial, *, dtr: bool, rts: bool) -> None:
    """Wait until the modem lines are what a loopback plug shows for ``dtr`` and ``rts``."""
    want = {"cts": rts, "dsr": dtr, "cd": dtr, "ri": False}
    try:
        wait_for(lambda: modem_lines(ser) == want, timeout=SETTLE)
    except AssertionError:
        raise AssertionError(
            f"with dtr={dtr} rts={rts}: modem lines {modem_lines(ser)}, a loopback plug shows {want}"
        ) from None


def test_modem_lines_follow_dtr_and_rts(plug: serial.Serial) -> None:
    # pyserial opens with DTR and RTS asserted, as a freshly opened real port has them.
    assert plug.dtr and plug.rts
    expect_lines(plug, dtr=True, rts=True)
    # Every combination, each line moving on its own, and back to the start.
    for dtr, rts in [(False, True), (False, False), (True, False), (True, True), (False, False)]:
        plug.dtr = dtr
        plug.rts = rts
        expect_lines(plug, dtr=dtr, rts=rts)
    plug.dtr = plug.rts = True
    expect_lines(plug, dtr=True, rts=True)


def test_data_echoes_whatever_the_lines_do(plug: serial.Serial) -> None:
    plug.write(ALL_BYTES)  # 0xFF must survive Telnet escaping both ways
    assert plug.read(len(ALL_BYTES)) == ALL_BYTES
    plug.dtr = plug.rts = False
    expect_lines(plug, dtr=False, rts=False)
    plug.write(b"still here")
    assert plug.read(10) == b"still here"


def test_break_comes_back_as_a_nul(plug: serial.Serial) -> None:
    plug.send_break(0.01)  # SET-CONTROL BREAK-ON, then BREAK-OFF
    plug.write(b"after")
    assert plug.read(6) == b"\x00after"
    # Bytes sent while the break holds the line are lost on a real wire, and here.
    plug.break_condition = True
    plug.write(b"lost")
    plug.break_condition = False
    plug.write(b"kept")
    assert plug.read(5) == b"\x00kept"
    expect_lines(plug, dtr=True, rts=True)  # a break is not a modem line
