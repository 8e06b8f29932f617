"""The simulated devices: sim:echo and sim:nmea."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import pytest

from meshserial.errors import PortClosed, UsageError
from meshserial.ports.base import WRITE_HIGH_WATER, Capabilities
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
