"""The simulated devices: sim:echo and sim:nmea."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest

from meshserial.errors import PortClosed, UsageError
from meshserial.ports.base import WRITE_HIGH_WATER, Capabilities, ModemStateChanged
from meshserial.ports.sim import SimulatedDevice, nmea_checksum, nmea_fix
from meshserial.proto.settings import ModemState, SerialSettings

from ._helpers import Recorder


def test_unknown_kind() -> None:
    with pytest.raises(UsageError, match=r"sim:echo, sim:nmea"):
        SimulatedDevice("modem")


async def test_capabilities_lines_and_close() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    assert port.capabilities == Capabilities()
    assert port.modem_state() == ModemState.CTS | ModemState.DSR | ModemState.CD
    odd = SerialSettings(baudrate=250000, bytesize=5)
    assert port.configure(odd) == odd == port.settings
    port.set_control(dtr=False, break_=True)
    assert port.control == (False, True, True)
    await port.aclose()
    await port.aclose()
    assert rec.closed == [None]
    with pytest.raises(PortClosed):
        port.write(b"x")


# ---- sim:echo is a loopback plug: RTS -> CTS, DTR -> DSR and CD, RI open ---------------------------

CTS, DSR, RI, CD = ModemState.CTS, ModemState.DSR, ModemState.RI, ModemState.CD
D_CTS, D_DSR, D_CD = ModemState.DELTA_CTS, ModemState.DELTA_DSR, ModemState.DELTA_CD


@pytest.mark.parametrize(
    ("dtr", "rts", "lines"),
    [
        (True, True, CTS | DSR | CD),
        (False, True, CTS),
        (True, False, DSR | CD),
        (False, False, ModemState(0)),
    ],
    ids=["both-on", "rts-only", "dtr-only", "both-off"],
)
async def test_echo_lines_follow_the_control_lines(dtr: bool, rts: bool, lines: ModemState) -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    try:
        port.set_control(dtr=dtr, rts=rts)
        # Answered at once, before the change has been reported to the listener.
        assert port.modem_state() == lines
        assert not lines & RI
    finally:
        await port.aclose()


async def test_echo_starts_like_a_freshly_opened_port() -> None:
    port = SimulatedDevice("echo")
    assert port.control == (True, True, False)
    assert port.modem_state() == CTS | DSR | CD
    port.set_control(dtr=False)  # before start: nobody to tell, but the lines follow
    assert port.modem_state() == CTS
    rec = Recorder()
    await port.start(rec)
    try:
        port.set_control(rts=False)
        event = await rec.wait_event(ModemStateChanged)
        assert event.state == D_CTS  # only the change made while someone listened
        assert rec.of_type(ModemStateChanged) == [event]
    finally:
        await port.aclose()


async def test_echo_reports_each_change_with_delta_bits() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    try:
        steps = [
            ({"dtr": False}, CTS | D_DSR | D_CD),
            ({"rts": False}, D_CTS),
            ({"dtr": True}, DSR | CD | D_DSR | D_CD),
            ({"rts": True}, CTS | DSR | CD | D_CTS),
        ]
        for n, (change, expected) in enumerate(steps, start=1):
            port.set_control(**change)
            assert (await rec.wait_event(ModemStateChanged, n)).state == expected
        # Setting a line to what it already is, or driving BREAK, changes no modem line: no event. The
        # RTS change after them is reported next, so nothing came in between.
        port.set_control(dtr=True, rts=True)
        port.set_control(break_=True)
        port.set_control(break_=False)
        port.set_control(rts=False)
        assert (await rec.wait_event(ModemStateChanged, len(steps) + 1)).state == DSR | CD | D_CTS
        assert len(rec.of_type(ModemStateChanged)) == len(steps) + 1
    finally:
        await port.aclose()


async def test_echo_latches_a_pulse_shorter_than_a_report() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    try:
        # DTR off and on again before the listener hears about it: the lines are back where they were,
        # but the delta bits say they moved, as a UART's status register would.
        port.set_control(dtr=False)
        port.set_control(dtr=True)
        event = await rec.wait_event(ModemStateChanged)
        assert event.state == CTS | DSR | CD | D_DSR | D_CD
        port.set_control(rts=False)
        assert (await rec.wait_event(ModemStateChanged, 2)).state == DSR | CD | D_CTS
    finally:
        await port.aclose()


async def callbacks_so_far() -> None:
    """Return once every callback already scheduled with ``call_soon`` has run (the queue is FIFO)."""
    marker = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(marker.set_result, None)
    await asyncio.wait_for(marker, 1.0)


async def test_echo_reports_nothing_after_close() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    port.set_control(dtr=False)  # its report would come one iteration later
    await port.aclose()
    port.set_control(rts=False)  # a closed port does not complain
    assert port.control == (False, False, False)
    await callbacks_so_far()
    assert rec.events == []
    assert rec.closed == [None]


async def test_echo_returns_a_break_as_one_nul_and_drops_what_is_sent_during_it() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    try:
        port.write(b"before")
        port.set_control(break_=True)
        port.set_control(break_=True)  # still the same break
        port.write(b"lost in the break")
        port.set_control(break_=False)
        port.write(b"after")
        await rec.wait(lambda: rec.data.endswith(b"after"))
        assert bytes(rec.data) == b"before\x00after"
        # A break is not a modem line.
        assert rec.of_type(ModemStateChanged) == []
        assert port.modem_state() == CTS | DSR | CD
    finally:
        await port.aclose()


async def test_nmea_lines_are_not_wired() -> None:
    port = SimulatedDevice("nmea")
    rec = Recorder()
    await port.start(rec)
    try:
        port.set_control(dtr=False, rts=False, break_=True)
        assert port.control == (False, False, True)
        assert port.modem_state() == CTS | DSR | CD
        await rec.wait(lambda: rec.data.count(b"\n") >= 2, timeout=1.0)
        assert rec.events == []
    finally:
        await port.aclose()


async def test_echo_round_trip() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    try:
        data = bytes(range(256)) + os.urandom(100_000)
        port.write(data)
        await rec.wait(lambda: len(rec.data) >= len(data))
        assert bytes(rec.data) == data
    finally:
        await port.aclose()


async def test_echo_respects_pause_and_bounds_its_buffer() -> None:
    port = SimulatedDevice("echo")
    rec = Recorder()
    await port.start(rec)
    try:
        port.pause_reading()
        chunk = os.urandom(32 * 1024)
        sent = bytearray()
        for _ in range(64):
            if rec.pauses:
                break
            port.write(chunk)
            sent += chunk
            await asyncio.sleep(0)
        assert rec.pauses == 1
        assert rec.data == b""
        assert port.write_buffer_size() <= WRITE_HIGH_WATER + len(chunk)
        port.resume_reading()
        await rec.wait(lambda: len(rec.data) >= len(sent))
        assert bytes(rec.data) == bytes(sent)
        assert rec.resumes == 1
        port.pause_reading()
        port.write(b"gone")
        port.purge(rx=True, tx=False)
        port.resume_reading()
        port.write(b"kept")
        await rec.wait(lambda: rec.data.endswith(b"kept"))
        assert b"gone" not in rec.data[len(sent) :]
    finally:
        await port.aclose()


def test_nmea_checksum_known_answer() -> None:
    body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert nmea_checksum(body) == "47"


def check_sentence(line: bytes) -> list[str]:
    text = line.decode("ascii")
    assert text.startswith("$") and text.endswith("\r\n")
    body, _, checksum = text[1:-2].partition("*")
    assert checksum == nmea_checksum(body)
    return body.split(",")


def test_nmea_fix_is_plausible() -> None:
    lines = nmea_fix(dt.datetime(2024, 5, 1, 12, 34, 56, 780000, tzinfo=dt.UTC), 3).splitlines(keepends=True)
    gga, rmc = (check_sentence(line) for line in lines)
    assert gga[0] == "GPGGA" and len(gga) == 15 and gga[1] == "123456.78" and gga[6] == "1"
    assert gga[3] == "N" and gga[5] == "E" and 4722 <= float(gga[2]) <= 4723
    assert rmc[0] == "GPRMC" and rmc[2] == "A" and rmc[9] == "010524"


async def test_nmea_emits_fixes_every_second() -> None:
    port = SimulatedDevice("nmea", SerialSettings(baudrate=9600))
    rec = Recorder()
    await port.start(rec)
    try:
        await rec.wait(lambda: rec.data.count(b"\n") >= 2, timeout=1.0)
        await rec.wait(lambda: rec.data.count(b"\n") >= 4, timeout=2.0)
        lines = bytes(rec.data).splitlines(keepends=True)
        kinds = [check_sentence(line)[0] for line in lines if line.endswith(b"\n")]
        assert kinds[:4] == ["GPGGA", "GPRMC", "GPGGA", "GPRMC"]
        port.write(b"ignored")
        assert port.write_buffer_size() == 0
    finally:
        await port.aclose()


async def test_nmea_is_paced_by_baud_and_follows_changes() -> None:
    port = SimulatedDevice("nmea", SerialSettings(baudrate=300))  # 30 bytes/s, a fix is ~150 bytes
    rec = Recorder()
    loop = asyncio.get_running_loop()
    await port.start(rec)
    try:
        await rec.wait(lambda: len(rec.data) > 0, timeout=1.0)
        t0, n0 = loop.time(), len(rec.data)
        await asyncio.sleep(1.0)  # measuring a rate, not waiting for an event
        rate = (len(rec.data) - n0) / (loop.time() - t0)
        assert 10 <= rate <= 30 * 1.2, rate
        assert rec.data.count(b"\n") == 0  # the first sentence has not even finished
        port.configure(SerialSettings(baudrate=115200))
        await rec.wait(lambda: rec.data.count(b"\n") >= 2, timeout=1.0)
    finally:
        await port.aclose()
