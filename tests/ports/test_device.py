"""SerialDevice against PTY pairs: the test holds the master as "the device side"."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import select
import struct
import termios
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from meshserial.errors import PortBusy, PortClosed, PortError, PortNotFound
from meshserial.ports import termios_util
from meshserial.ports.base import WRITE_HIGH_WATER, PeerClosed, PeerOpened
from meshserial.ports.device import DeviceState, SerialDevice, modem_delta, translate_open_error
from meshserial.proto.settings import FlowControl, ModemState, Parity, SerialSettings, StopBits

from ._helpers import FakeDevice, Recorder, read_fd, wait_readable, write_fd

S9600 = SerialSettings(baudrate=9600)


@pytest.fixture
def fake() -> Iterator[FakeDevice]:
    dev = FakeDevice()
    yield dev
    dev.close()


@asynccontextmanager
async def running(port: SerialDevice) -> AsyncIterator[Recorder]:
    rec = Recorder()
    await port.start(rec)
    try:
        yield rec
    finally:
        await port.aclose()


async def pending_input(fd: int) -> int:
    """Wait (bounded) until the tty's input queue holds bytes; return how many."""
    await wait_readable(fd)
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


# --- opening -----------------------------------------------------------------------------------


async def test_missing_path_is_port_not_found(tmp_path: Path) -> None:
    with pytest.raises(PortNotFound, match="no such serial device"):
        await SerialDevice(str(tmp_path / "ttyUSB9"), S9600).start(Recorder())


async def test_not_a_tty(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_bytes(b"")
    with pytest.raises(PortError, match="not a serial port"):
        await SerialDevice(str(plain), S9600).start(Recorder())


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.ENOENT, PortNotFound, "no such"),
        (errno.EBUSY, PortBusy, "in use"),
        (errno.EAGAIN, PortBusy, "locked"),
        (errno.EACCES, PortError, "dialout"),
        (errno.EIO, PortError, "cannot open"),
    ],
)
def test_open_error_messages(code: int, kind: type[PortError], words: str) -> None:
    err = translate_open_error("/dev/ttyUSB0", OSError(code, os.strerror(code)))
    assert type(err) is kind
    assert words in str(err) and "/dev/ttyUSB0" in str(err)


async def test_exclusive_lock(fake: FakeDevice) -> None:
    first = SerialDevice(fake.path, S9600)
    async with running(first):
        with pytest.raises(PortBusy):
            await SerialDevice(fake.path, S9600).start(Recorder())
        # Without ``exclusive`` no lock is taken or checked (shared use is the caller's choice).
        async with running(SerialDevice(fake.path, S9600, exclusive=False)):
            pass


async def test_close_is_final_and_idempotent(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    rec = Recorder()
    await port.start(rec)
    assert port.state is DeviceState.PRESENT
    await port.aclose()
    await port.aclose()
    assert rec.closed == [None]
    with pytest.raises(PortClosed):
        port.write(b"x")
    with pytest.raises(PortClosed):
        port.configure(S9600.with_changes(baudrate=1200))


# --- data ----------------------------------------------------------------------------------------


async def test_data_both_ways(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, SerialSettings(baudrate=115200))
    async with running(port) as rec:
        every = bytes(range(256)) * 4
        port.write(every)
        assert await read_fd(fake.master, len(every)) == every
        await write_fd(fake.master, every)
        await rec.wait(lambda: len(rec.data) >= len(every))
        assert bytes(rec.data) == every

        big = os.urandom(1 << 20)
        port.write(big)
        assert await read_fd(fake.master, len(big), timeout=20) == big
        rec.data.clear()
        sender = asyncio.create_task(write_fd(fake.master, big, timeout=20))
        await rec.wait(lambda: len(rec.data) >= len(big), timeout=20)
        await sender
        assert bytes(rec.data) == big


def _stream_into(fd: int, data: bytes, timeout: float) -> None:
    """Write ``data`` to a non-blocking ``fd`` from a thread, as a device streaming on its own."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view and time.monotonic() < deadline:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [], 0.1)


async def test_bursts_are_read_in_large_deliveries(fake: FakeDevice) -> None:
    """A tty hands over at most about one 4 KiB buffer per read; a burst is read on until it pauses,
    so it reaches the listener in fewer, larger pieces, while a lone byte is delivered by itself."""
    port = SerialDevice(fake.path, SerialSettings(baudrate=115200))
    async with running(port) as rec:
        await write_fd(fake.master, b"x")
        await rec.wait(lambda: len(rec.data) >= 1)
        assert rec.sizes == [1]
        big = os.urandom(1 << 20)
        sender = asyncio.create_task(asyncio.to_thread(_stream_into, fake.master, big, 20))
        await rec.wait(lambda: len(rec.data) >= 1 + len(big), timeout=20)
        await sender
        assert bytes(rec.data) == b"x" + big
        # One delivery per tty buffer would be about 256 of them.
        assert len(rec.sizes) < 80, f"{len(rec.sizes)} deliveries, largest {max(rec.sizes)} bytes"
        assert max(rec.sizes) <= 64 * 1024


async def test_back_pressure(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port) as rec:
        chunk = os.urandom(64 * 1024)
        sent = bytearray()
        for _ in range(64):
            if rec.pauses:
                break
            port.write(chunk)
            sent += chunk
        assert rec.pauses == 1
        assert port.write_buffer_size() <= WRITE_HIGH_WATER + len(chunk)
        assert await read_fd(fake.master, len(sent), timeout=20) == bytes(sent)
        await rec.wait(lambda: rec.resumes == 1)


async def test_pause_reading(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port) as rec:
        port.pause_reading()
        os.write(fake.master, b"held")
        assert await pending_input(port._fd) == 4
        await asyncio.sleep(0)
        assert rec.data == b""
        port.resume_reading()
        await rec.wait(lambda: rec.data == b"held")


# --- settings --------------------------------------------------------------------------------------


async def test_settings_visible_on_the_wire(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port):
        assert termios_util.read_line(fake.master).baudrate == 9600
        for baud in (57600, 250000, 1200):  # 250000 is a custom rate (BOTHER + TCSETS2)
            got = port.configure(port.settings.with_changes(baudrate=baud))
            assert got.baudrate == baud == termios_util.read_line(fake.master).baudrate
        got = port.configure(port.settings.with_changes(stopbits=StopBits.TWO, flow=FlowControl.RTSCTS))
        view = termios_util.read_line(fake.master)
        assert (view.stopbits, view.flow) == (StopBits.TWO, FlowControl.RTSCTS)
        assert (got.stopbits, got.flow) == (StopBits.TWO, FlowControl.RTSCTS)
        got = port.configure(got.with_changes(flow=FlowControl.XONXOFF))
        assert termios_util.read_line(fake.master).flow is FlowControl.XONXOFF is got.flow
        assert port.settings == got


async def test_identical_settings_do_not_touch_termios(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port):
        calls: list[Any] = []
        real = port._serial._reconfigure_port
        port._serial._reconfigure_port = lambda *a, **k: (calls.append(a), real(*a, **k))
        for _ in range(3):
            assert port.configure(SerialSettings(baudrate=9600)) == port.settings
        assert calls == []
        port.configure(SerialSettings(baudrate=19200))
        assert len(calls) == 1


async def test_pty_refuses_data_bits_and_parity(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port):
        # Only CSIZE/PARENB change: glibc reports EINVAL on a PTY (reference P3); not fatal.
        got = port.configure(SerialSettings(baudrate=9600, bytesize=7, parity=Parity.EVEN))
        assert (got.bytesize, got.parity) == (8, Parity.NONE)
        assert port.settings == got
        # With a speed change the call succeeds, but the kernel still forces CS8 (P2).
        got = port.configure(SerialSettings(baudrate=4800, bytesize=7, parity=Parity.EVEN))
        assert (got.baudrate, got.bytesize, got.parity) == (4800, 8, Parity.NONE)
        # Asking again for the same is a no-op, not another refusal.
        assert port.configure(SerialSettings(baudrate=4800, bytesize=7, parity=Parity.EVEN)) == got


async def test_open_with_framing_the_pty_refuses(fake: FakeDevice) -> None:
    async with running(SerialDevice(fake.path, S9600)):
        pass  # leaves the PTY raw at 9600 8N1 (termios persist while the master is open, P15)
    # Now opening at 9600 7E1 changes only CSIZE/PARENB: pyserial's open fails with EINVAL (P3).
    port = SerialDevice(fake.path, SerialSettings(baudrate=9600, bytesize=7, parity=Parity.EVEN))
    async with running(port):
        assert (port.settings.bytesize, port.settings.parity) == (8, Parity.NONE)
        port.write(b"ok")
        assert await read_fd(fake.master, 2) == b"ok"


async def test_lines_on_a_pty(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port):
        assert port.capabilities.modem_lines is False
        assert port.modem_state() is None
        assert port.control == (True, True, False)
        port.set_control(dtr=False, break_=True)  # ENOTTY on a PTY: accepted, remembered
        port.set_control(break_=False)
        assert port.control == (False, True, False)


async def test_purge(fake: FakeDevice) -> None:
    port = SerialDevice(fake.path, S9600)
    async with running(port) as rec:
        port.pause_reading()
        os.write(fake.master, b"stale")
        await pending_input(port._fd)
        port.purge(rx=True, tx=False)
        os.write(fake.master, b"fresh")
        port.resume_reading()
        await rec.wait(lambda: len(rec.data) >= 5)
        assert rec.data == b"fresh"

        while not rec.pauses:  # nobody reads the master: fill the kernel and our queue
            port.write(bytes(64 * 1024))
        port.purge(rx=False, tx=True)
        assert port.write_buffer_size() == 0
        assert rec.resumes == 1


def test_modem_delta() -> None:
    m = ModemState
    assert modem_delta(m.CTS | m.DSR, m.CTS | m.DSR) is None
    assert modem_delta(None, m.CD) == m.CD
    assert modem_delta(m.CTS, m.DSR) == m.DSR | m.DELTA_CTS | m.DELTA_DSR
    assert modem_delta(m.RI | m.CD, m(0)) == m.TRAILING_EDGE_RI | m.DELTA_CD
    assert modem_delta(m(0), m.RI) == m.RI  # only the trailing edge of RI is reported


# --- hot-plug ------------------------------------------------------------------------------------


async def test_unplug_and_replug(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyUSB0")
    first = FakeDevice(link)
    port = SerialDevice(link, S9600)
    second: FakeDevice | None = None
    try:
        async with running(port) as rec:
            port.configure(SerialSettings(baudrate=57600, stopbits=StopBits.TWO))
            port.set_control(rts=False)
            first.close()  # unplug
            closed = await rec.wait_event(PeerClosed, timeout=1.0)
            assert closed.reason
            assert port.state is DeviceState.ABSENT
            port.write(b"into the void")
            assert port.write_buffer_size() == 0
            second = FakeDevice(link)  # replug behind the same path
            await rec.wait_event(PeerOpened, timeout=1.0)
            view = termios_util.read_line(second.master)
            assert (view.baudrate, view.stopbits) == (57600, StopBits.TWO)
            assert port.control == (True, False, False)
            port.write(b"hello")
            assert await read_fd(second.master, 5) == b"hello"
            os.write(second.master, b"world")
            await rec.wait(lambda: rec.data.endswith(b"world"))
            assert b"into the void" not in rec.data
    finally:
        first.close()
        if second is not None:
            second.close()


async def test_path_vanishes_and_returns(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyACM0")
    dev = FakeDevice(link)
    other: FakeDevice | None = None
    port = SerialDevice(link, S9600)
    try:
        async with running(port) as rec:
            os.unlink(link)  # the node goes away while the fd still works
            await rec.wait_event(PeerClosed, timeout=2.5)
            os.symlink(dev.slave_path, link)
            await rec.wait_event(PeerOpened, timeout=1.0)
            other = FakeDevice(link)  # the path now names another device
            await rec.wait_event(PeerClosed, count=2, timeout=2.5)
            await rec.wait_event(PeerOpened, count=2, timeout=1.0)
            port.write(b"new")
            assert await read_fd(other.master, 3) == b"new"
    finally:
        dev.close()
        if other is not None:
            other.close()


async def test_wait_for_device(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyUSB1")
    with pytest.raises(PortNotFound):
        await SerialDevice(link, S9600).start(Recorder())
    port = SerialDevice(link, S9600, wait=True)
    dev: FakeDevice | None = None
    try:
        async with running(port) as rec:
            assert port.state is DeviceState.ABSENT
            port.write(b"dropped")
            dev = FakeDevice(link)
            await rec.wait_event(PeerOpened, timeout=1.0)
            assert rec.of_type(PeerClosed) == []
            port.write(b"ok")
            assert await read_fd(dev.master, 2) == b"ok"
    finally:
        if dev is not None:
            dev.close()
