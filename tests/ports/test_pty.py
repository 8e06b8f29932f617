"""PtyPort against real applications opening the slave (os.open and pyserial)."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import serial

from meshserial.errors import PortClosed, PortError
from meshserial.ports import termios_util
from meshserial.ports.base import (
    WRITE_HIGH_WATER,
    PeerClosed,
    PeerOpened,
    PurgeRequested,
    SettingsChanged,
)
from meshserial.ports.pty import PTY_LIMITATIONS, PtyPort, PtyState
from meshserial.proto.settings import FlowControl, Parity, SerialSettings, StopBits

from ._helpers import Recorder, read_fd, wait_readable, write_fd


@asynccontextmanager
async def started(port: PtyPort) -> AsyncIterator[Recorder]:
    rec = Recorder()
    await port.start(rec)
    try:
        yield rec
    finally:
        await port.aclose()


def app_open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def test_capabilities_and_limitations() -> None:
    port = PtyPort()
    caps = port.capabilities
    assert (caps.bytesize, caps.parity, caps.modem_lines, caps.break_) == (False, False, False, False)
    assert caps.baudrate and caps.stopbits and caps.flow and caps.purge
    for flag in ("--baud", "--databits", "--parity", "--stopbits"):
        assert flag in PTY_LIMITATIONS
    async with started(port):
        assert port.modem_state() is None
        port.set_control(dtr=True, break_=True)
        assert port.control == (True, False, True)


async def test_start_link_mode_and_close(tmp_path: Path) -> None:
    link = tmp_path / "ttyMESH0"
    group = grp.getgrgid(os.getgid()).gr_name
    port = PtyPort(link=link, settings=SerialSettings(baudrate=115200), mode=0o640, group=group)
    rec = Recorder()
    await port.start(rec)
    assert port.path.startswith("/dev/pts/")
    assert port.name == port.path
    assert os.readlink(link) == port.path
    st = os.stat(port.path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == os.getgid()
    fd = app_open(str(link))
    try:
        assert termios_util.read_line(fd).baudrate == 115200
        # Raw slave: nothing the network writes comes back as echo (reference P16).
        lflag = termios.tcgetattr(fd)[3]
        assert not lflag & termios.ECHO
        assert lflag & termios_util.EXTPROC
    finally:
        os.close(fd)
    await port.aclose()
    await port.aclose()
    assert not link.exists() and not link.is_symlink()
    assert rec.closed == [None]
    assert port.state is PtyState.CLOSED
    with pytest.raises(PortClosed):
        port.write(b"x")


async def test_link_refuses_regular_file(tmp_path: Path) -> None:
    link = tmp_path / "ttyMESH0"
    link.write_text("precious")
    port = PtyPort(link=link)
    rec = Recorder()
    with pytest.raises(PortError, match="not a symlink"):
        await port.start(rec)
    assert link.read_text() == "precious"
    assert rec.closed == []
    assert port.state is PtyState.CLOSED


async def test_link_replaces_stale_symlink(tmp_path: Path) -> None:
    link = tmp_path / "ttyMESH0"
    link.symlink_to("/dev/pts/does-not-exist")
    async with started(PtyPort(link=link)) as _rec:
        pass
    assert not link.is_symlink()


async def test_open_close_reopen_without_spinning() -> None:
    port = PtyPort()
    async with started(port) as rec:
        assert port.state is PtyState.IDLE
        fd = app_open(port.path)
        await rec.wait_event(PeerOpened)
        os.close(fd)
        await rec.wait_event(PeerClosed)
        assert port.state is PtyState.IDLE
        # Idle on a HUP'd master: a registered reader would burn a whole core (reference P14).
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(0.5)
        cpu = time.process_time() - cpu0
        assert time.monotonic() - wall0 >= 0.5
        assert cpu < 0.15, f"{cpu:.3f}s CPU while idle"
        fd = app_open(port.path)
        try:
            await rec.wait_event(PeerOpened, count=2)
            assert len(rec.of_type(PeerClosed)) == 1
        finally:
            os.close(fd)
        await rec.wait_event(PeerClosed, count=2)


async def test_data_both_ways_all_bytes_and_1mib() -> None:
    port = PtyPort()
    async with started(port) as rec:
        fd = app_open(port.path)
        try:
            await rec.wait_event(PeerOpened)
            every = bytes(range(256)) * 4
            await write_fd(fd, every)
            await rec.wait(lambda: len(rec.data) >= len(every))
            assert bytes(rec.data) == every
            port.write(every)
            assert await read_fd(fd, len(every)) == every

            big = os.urandom(1 << 20)
            rec.data.clear()
            send = asyncio.create_task(write_fd(fd, big, timeout=20))
            await rec.wait(lambda: len(rec.data) >= len(big), timeout=20)
            await send
            assert bytes(rec.data) == big

            port.write(big)
            assert await read_fd(fd, len(big), timeout=20) == big
            assert port.write_buffer_size() == 0
        finally:
            os.close(fd)


async def test_network_data_discarded_while_no_app() -> None:
    port = PtyPort()
    async with started(port) as rec:
        port.write(b"lost")
        assert port.write_buffer_size() == 0
        fd = app_open(port.path)
        try:
            await rec.wait_event(PeerOpened)
            port.write(b"ok")
            assert await read_fd(fd, 2) == b"ok"
        finally:
            os.close(fd)


async def test_quick_app_between_polls_is_seen() -> None:
    port = PtyPort()
    async with started(port) as rec:
        fd = os.open(port.path, os.O_WRONLY | os.O_NOCTTY)
        os.write(fd, b"AT\r")
        os.close(fd)
        await rec.wait(lambda: bytes(rec.data) == b"AT\r")
        await rec.wait_event(PeerClosed)
        assert len(rec.of_type(PeerOpened)) == 1


async def test_app_settings_are_reported() -> None:
    port = PtyPort(settings=SerialSettings(baudrate=115200, bytesize=7, parity=Parity.EVEN))
    async with started(port) as rec:
        app = serial.Serial(port.path, 9600)
        try:
            await rec.wait_event(PeerOpened)
            await rec.wait(lambda: any(e.settings.baudrate == 9600 for e in rec.of_type(SettingsChanged)))
            app.baudrate = 57600
            ev = await rec.wait_event(SettingsChanged, count=len(rec.of_type(SettingsChanged)) + 1)
            assert ev.settings.baudrate == 57600
            # Data bits and parity are not observable on a PTY: the configured ones are kept.
            assert (ev.settings.bytesize, ev.settings.parity) == (7, Parity.EVEN)
            assert port.settings == ev.settings

            app.baudrate = 250000  # custom rate: BOTHER + TCSETS2 (reference P4)
            await rec.wait(lambda: port.settings.baudrate == 250000)
            assert rec.of_type(SettingsChanged)[-1].settings.baudrate == 250000

            app.stopbits = serial.STOPBITS_TWO
            await rec.wait(lambda: port.settings.stopbits is StopBits.TWO)
            app.rtscts = True
            await rec.wait(lambda: port.settings.flow is FlowControl.RTSCTS)
            app.rtscts = False
            app.xonxoff = True
            await rec.wait(lambda: port.settings.flow is FlowControl.XONXOFF)
        finally:
            app.close()
        await rec.wait_event(PeerClosed)


async def test_identical_tcsetattr_is_not_reported() -> None:
    port = PtyPort(settings=SerialSettings(baudrate=9600))
    async with started(port) as rec:
        app = serial.Serial(port.path, 9600)
        try:
            await rec.wait_event(PeerOpened)
            # pyserial re-applies everything; with EXTPROC every tcsetattr raises TIOCPKT_IOCTL (P6).
            app.timeout = 1
            app.reset_output_buffer()
            await rec.wait(lambda: any(e.tx for e in rec.of_type(PurgeRequested)))
            assert rec.of_type(SettingsChanged) == []
        finally:
            app.close()


async def test_purges_are_reported() -> None:
    port = PtyPort()
    async with started(port) as rec:
        app = serial.Serial(port.path, 9600)
        try:
            await rec.wait_event(PeerOpened)
            n = len(rec.of_type(PurgeRequested))
            app.reset_output_buffer()
            await rec.wait(lambda: any(e.tx for e in rec.of_type(PurgeRequested)[n:]))
            n = len(rec.of_type(PurgeRequested))
            app.reset_input_buffer()
            await rec.wait(lambda: any(e.rx for e in rec.of_type(PurgeRequested)[n:]))
            termios.tcflush(app.fd, termios.TCIOFLUSH)
            await rec.wait(
                lambda: (
                    any(e.rx for e in rec.of_type(PurgeRequested)[n + 1 :])
                    and any(e.tx for e in rec.of_type(PurgeRequested)[n + 1 :])
                )
            )
        finally:
            app.close()


async def test_configure_shows_remote_baud_without_echo() -> None:
    port = PtyPort(settings=SerialSettings(baudrate=9600))
    async with started(port) as rec:
        same = port.configure(SerialSettings(baudrate=9600))
        assert same == SerialSettings(baudrate=9600)
        # While idle: the application will find the remote's rate when it opens.
        port.configure(SerialSettings(baudrate=230400, bytesize=7))
        fd = app_open(port.path)
        try:
            await rec.wait_event(PeerOpened)
            assert termios_util.read_line(fd).baudrate == 230400
            # While open, a custom rate too; then a later purge proves no echo event was queued before it.
            # The remote's stop bits differ from the application's: that must not bounce back either.
            got = port.configure(SerialSettings(baudrate=250000, bytesize=7, stopbits=StopBits.TWO))
            assert got.baudrate == 250000 and port.settings.bytesize == 7
            assert termios_util.read_line(fd).baudrate == 250000
            termios.tcflush(fd, termios.TCOFLUSH)
            await rec.wait_event(PurgeRequested)
            assert rec.of_type(SettingsChanged) == []
        finally:
            os.close(fd)


async def test_back_pressure_when_app_does_not_read() -> None:
    port = PtyPort()
    async with started(port) as rec:
        fd = app_open(port.path)
        try:
            await rec.wait_event(PeerOpened)
            chunk = os.urandom(64 * 1024)
            sent = bytearray()
            for _ in range(64):  # at most 4 MiB; the port must push back long before
                if rec.pauses:
                    break
                port.write(chunk)
                sent += chunk
            assert rec.pauses == 1
            assert port.write_buffer_size() <= WRITE_HIGH_WATER + len(chunk)
            got = await read_fd(fd, len(sent), timeout=20)
            assert got == bytes(sent)
            await rec.wait(lambda: rec.resumes == 1)
        finally:
            os.close(fd)


async def test_app_close_drops_queue_and_resumes_producer() -> None:
    port = PtyPort()
    async with started(port) as rec:
        fd = app_open(port.path)
        await rec.wait_event(PeerOpened)
        while not rec.pauses:
            port.write(bytes(64 * 1024))
        os.close(fd)
        await rec.wait_event(PeerClosed)
        assert port.write_buffer_size() == 0
        assert rec.resumes == 1


async def test_pause_reading_holds_data() -> None:
    port = PtyPort()
    async with started(port) as rec:
        fd = app_open(port.path)
        try:
            await rec.wait_event(PeerOpened)
            port.pause_reading()
            os.write(fd, b"held")
            # The bytes are waiting in the master, yet nothing was delivered.
            await wait_readable(port._master)
            await asyncio.sleep(0)
            assert rec.data == b""
            port.resume_reading()
            await rec.wait(lambda: rec.data == b"held")
        finally:
            os.close(fd)
