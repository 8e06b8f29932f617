"""A real serial device through pyserial, driven by the event loop.

Theory of operation:

* pyserial opens the device (``O_NONBLOCK``, ``flock`` for ``exclusive``) and applies settings, DTR,
  RTS and BREAK; the bytes themselves go through ``os.read``/``os.write`` on its fd, watched with
  ``loop.add_reader``/``add_writer`` -- no thread per port, no thread per byte.
* States: ``NEW`` -> ``PRESENT`` (open) <-> ``ABSENT`` (unplugged) -> ``CLOSED``.

  - ``PRESENT`` -> ``ABSENT`` when a read or write fails with ``EIO``/``ENXIO`` (or returns EOF, as a
    hung-up tty does), or when a 1 s check finds the path gone or pointing at another device.
    :class:`PeerClosed` is emitted; the :class:`SerialDevice` object stays usable and writes are
    discarded, as a UART with nothing attached would.
  - ``ABSENT`` -> ``PRESENT``: a 200 ms timer (one ``stat``) waits for the path to come back and reopens
    it with the last requested settings and control lines, then emits :class:`PeerOpened`. A device
    constructed with ``wait=True`` starts in ``ABSENT`` when the path does not exist yet.

* Modem status lines are polled with ``TIOCMGET`` every 100 ms, only if the driver supports it. A PTY
  has no modem lines at all (every modem-control ioctl on it fails with ``ENOTTY``); then
  ``capabilities.modem_lines`` is False and ``modem_state()`` is ``None``.
* Settings a device refuses are not fatal: ``configure`` returns what termios says is really in use. A
  PTY standing in for a device is the usual case: the kernel keeps a PTY at 8 data bits without parity,
  and glibc (Debian's, for one) reads the termios back after ``tcsetattr`` and reports a call that
  changed only data bits or parity as ``EINVAL`` (with a speed change in the same call it succeeds).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import fcntl
import logging
import os
import struct
import termios
from collections.abc import Callable
from typing import Any

import serial

from meshserial.errors import PortBusy, PortClosed, PortError, PortNotFound
from meshserial.ports import termios_util
from meshserial.ports.base import (
    Capabilities,
    ModemStateChanged,
    PeerClosed,
    PeerOpened,
    Port,
    PortListener,
    RemembersControl,
    WriterFlow,
)
from meshserial.ports.fdio import FdReader, FdWriter
from meshserial.proto.settings import FlowControl, ModemState, SerialSettings, modem_delta

log = logging.getLogger(__name__)

MODEM_POLL_INTERVAL = 0.1
PRESENCE_CHECK_INTERVAL = 1.0
REOPEN_POLL_INTERVAL = 0.2
READ_SIZE = 64 * 1024
FULL_READ = 512  # a read at least this long suggests the driver holds more: read again at once
MAX_READS_PER_WAKEUP = 16  # bounded, so a device streaming flat out cannot starve the event loop
# errnos that mean "the device went away" rather than "this call failed".
GONE_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF, errno.EPIPE})
NO_MODEM_ERRNOS = frozenset({errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})

_TIOCM_BITS = (
    (termios.TIOCM_CTS, ModemState.CTS),
    (termios.TIOCM_DSR, ModemState.DSR),
    (termios.TIOCM_RI, ModemState.RI),
    (termios.TIOCM_CD, ModemState.CD),
)


class DeviceState(enum.Enum):
    NEW = "new"
    PRESENT = "present"
    ABSENT = "absent"
    CLOSED = "closed"


def translate_open_error(path: str, exc: BaseException) -> PortError:
    """One clear message per reason a device cannot be opened."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return PortNotFound(f"{path}: no such serial device")
    if code in (errno.EBUSY, errno.EAGAIN):
        return PortBusy(f"{path} is in use by another program (busy or locked)")
    if code in (errno.EACCES, errno.EPERM):
        return PortError(
            f"permission denied on {path}; add your user to the 'dialout' group "
            "(sudo usermod -aG dialout $USER, then log in again)"
        )
    if code == errno.ENOTTY or "Could not configure port" in str(exc):
        return PortError(f"{path} is not a serial port")
    return PortError(f"cannot open {path}: {exc}")


def _pyserial_kwargs(settings: SerialSettings) -> dict[str, Any]:
    return {
        "baudrate": settings.baudrate,
        "bytesize": settings.bytesize,
        "parity": settings.parity.letter,
        "stopbits": settings.stopbits.count,
        "xonxoff": settings.flow is FlowControl.XONXOFF,
        "rtscts": settings.flow is FlowControl.RTSCTS,
    }


class SerialDevice(RemembersControl, Port):
    """A local UART (or anything pyserial can open by path), with hot-plug recovery."""

    def __init__(
        self, path: str, settings: SerialSettings, *, exclusive: bool = True, wait: bool = False
    ) -> None:
        self.name = path
        self.capabilities = Capabilities()
        self._path = path
        self._requested = settings  # what the owner asked for; reapplied after a hot-plug
        self._settings = settings  # what is really in use
        self._exclusive = exclusive
        self._wait = wait
        self._state = DeviceState.NEW
        self._serial: Any = None
        self._fd = -1
        self._rdev = 0
        self._listener: PortListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control = (True, True, False)  # pyserial raises DTR and RTS on open, like most drivers
        self._modem: ModemState | None = None
        self._modem_supported = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._in = FdReader(self._on_readable)
        self._flow = WriterFlow()
        self._out = FdWriter(
            flow=self._flow, on_error=lambda exc: self._lost(f"write failed: {exc.strerror}")
        )
        self._refused: set[str] = set()

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def present(self) -> bool:
        return self._state is DeviceState.PRESENT

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, listener: PortListener) -> None:
        if self._state is not DeviceState.NEW:
            raise PortError(f"{self.name}: already started")
        self._loop = asyncio.get_running_loop()
        try:
            self._open()
        except PortNotFound:
            if not self._wait:
                raise
            self._listener = self._flow.listener = listener
            self._state = DeviceState.ABSENT
            # Said without -v: a share that serves nothing yet must not look like a hang.
            log.warning("%s is not there yet; waiting for it to appear", self._path)
            self._timer("reopen", REOPEN_POLL_INTERVAL, self._on_reopen_timer)
            return
        self._listener = self._flow.listener = listener
        self._state = DeviceState.PRESENT
        self._arm()

    async def aclose(self) -> None:
        if self._state is DeviceState.CLOSED:
            return
        was_started = self._state is not DeviceState.NEW
        self._state = DeviceState.CLOSED
        self._release()
        if was_started and self._listener is not None:
            self._listener.port_closed(None)

    def _open(self) -> None:
        ser = serial.Serial(timeout=0, write_timeout=0, exclusive=self._exclusive or None)
        ser.port = self._path
        ser.apply_settings(_pyserial_kwargs(self._requested))
        ser.dtr, ser.rts = self._control[0], self._control[1]
        try:
            try:
                ser.open()
            except termios.error:
                # A PTY is always 8N: the kernel quietly keeps 8 data bits without parity, and glibc
                # reports a tcsetattr that changed only those as EINVAL. Open as 8N and say so.
                log.warning("%s refused %s; opening as 8N", self._path, self._requested.describe())
                ser.bytesize, ser.parity = serial.EIGHTBITS, serial.PARITY_NONE
                ser.open()
        except (OSError, termios.error, ValueError) as exc:  # serial.SerialException is an OSError
            raise translate_open_error(self._path, exc) from exc
        self._serial = ser
        self._fd = self._in.fd = self._out.fd = ser.fd
        try:
            self._rdev = os.fstat(self._fd).st_rdev
        except OSError:
            self._rdev = 0
        self._settings = self._read_actual()
        self._modem_supported = self._probe_modem()
        self.capabilities = Capabilities(modem_lines=self._modem_supported)
        if self._control[2]:
            self._apply_control(break_=True)
        log.info("opened %s (%s)", self._path, self._settings.describe())

    def _arm(self) -> None:
        """Start watching an open device."""
        self._in.arm()
        self._timer("presence", PRESENCE_CHECK_INTERVAL, self._on_presence_timer)
        if self._modem_supported:
            self._timer("modem", MODEM_POLL_INTERVAL, self._on_modem_timer)

    def _release(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._in.disarm()
        self._in.fd = -1
        self._out.detach()
        if self._serial is not None:
            try:
                self._serial.close()
            except (OSError, termios.error) as exc:
                log.debug("%s: close failed: %s", self._path, exc)
            self._serial = None
        self._fd = -1

    def _lost(self, reason: str) -> None:
        if self._state is not DeviceState.PRESENT:
            return
        log.warning("%s: %s; waiting for it to come back", self._path, reason)
        self._state = DeviceState.ABSENT
        self._release()
        if self._listener is not None:
            self._listener.port_event(PeerClosed(reason=reason))
        self._timer("reopen", REOPEN_POLL_INTERVAL, self._on_reopen_timer)

    def _on_reopen_timer(self) -> None:
        if self._state is not DeviceState.ABSENT:
            return
        if os.path.exists(self._path):
            try:
                self._open()
            except PortError as exc:
                log.debug("%s: reopen failed: %s", self._path, exc)
            else:
                self._state = DeviceState.PRESENT
                self._arm()
                if self._listener is not None:
                    self._listener.port_event(PeerOpened())
                return
        self._timer("reopen", REOPEN_POLL_INTERVAL, self._on_reopen_timer)

    def _on_presence_timer(self) -> None:
        if self._state is not DeviceState.PRESENT:
            return
        try:
            rdev = os.stat(self._path).st_rdev
        except OSError:
            self._lost("device disappeared")
            return
        if self._rdev and rdev != self._rdev:
            self._lost("device was replaced")
            return
        self._timer("presence", PRESENCE_CHECK_INTERVAL, self._on_presence_timer)

    def _timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = self._loop.call_later(delay, callback)

    # --- settings and lines --------------------------------------------------------------------

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    def _read_actual(self) -> SerialSettings:
        try:
            view = termios_util.read_line(self._fd)
        except (OSError, termios.error) as exc:
            log.debug("%s: cannot read termios back: %s", self._path, exc)
            return self._requested
        actual = view.merge_into(self._requested, framing=True)
        if actual != self._requested:
            log.info("%s: asked for %s, using %s", self._path, self._requested.describe(), actual.describe())
        return actual

    def configure(self, settings: SerialSettings) -> SerialSettings:
        if self._state is DeviceState.CLOSED:
            raise PortClosed(f"{self.name} is closed")
        # pyserial clients re-send every setting whenever their read timeout changes: identical
        # requests must not touch (and so disturb) the UART.
        if settings == self._requested:
            return self._settings
        if settings == self._settings:
            self._requested = settings
            return self._settings
        self._requested = settings
        if self._state is not DeviceState.PRESENT:
            self._settings = settings  # applied when the device (re)appears
            return settings
        ser = self._serial
        for attr, value in _pyserial_kwargs(settings).items():
            if getattr(ser, attr) == value:
                continue
            try:
                setattr(ser, attr, value)
            except (OSError, termios.error, ValueError) as exc:
                if getattr(exc, "errno", None) in GONE_ERRNOS:
                    self._lost(f"device failed: {exc}")
                    return self._requested
                if attr not in self._refused:
                    self._refused.add(attr)
                    log.warning("%s refused %s=%s: %s", self._path, attr, value, exc)
        self._settings = self._read_actual()
        return self._settings

    def _control_changed(
        self, before: tuple[bool, bool, bool], *, dtr: bool | None, rts: bool | None, break_: bool | None
    ) -> None:
        # Absent, the lines are only remembered: _open() sets them when the device is back.
        if self._state is DeviceState.PRESENT:
            self._apply_control(dtr=dtr, rts=rts, break_=break_)

    def _apply_control(
        self, *, dtr: bool | None = None, rts: bool | None = None, break_: bool | None = None
    ) -> None:
        ser = self._serial
        for attr, value in (("dtr", dtr), ("rts", rts), ("break_condition", break_)):
            if value is None:
                continue
            try:
                setattr(ser, attr, value)
            except (OSError, termios.error) as exc:
                # A PTY has no modem lines (its modem-control ioctls fail with ENOTTY): expected, so
                # stay quiet about it.
                if getattr(exc, "errno", None) in NO_MODEM_ERRNOS:
                    log.debug("%s: %s not supported: %s", self._path, attr, exc)
                else:
                    log.warning("%s: cannot set %s: %s", self._path, attr, exc)

    def modem_state(self) -> ModemState | None:
        return self._modem if self._modem_supported else None

    def _read_modem(self) -> ModemState:
        raw = fcntl.ioctl(self._fd, termios.TIOCMGET, struct.pack("I", 0))
        bits = struct.unpack("I", raw)[0]
        state = ModemState(0)
        for mask, line in _TIOCM_BITS:
            if bits & mask:
                state |= line
        return state

    def _probe_modem(self) -> bool:
        try:
            self._modem = self._read_modem()
        except OSError as exc:
            if exc.errno not in NO_MODEM_ERRNOS:
                log.debug("%s: TIOCMGET failed: %s", self._path, exc)
            return False
        return True

    def _on_modem_timer(self) -> None:
        if self._state is not DeviceState.PRESENT:
            return
        try:
            new = self._read_modem()
        except OSError as exc:
            if exc.errno in GONE_ERRNOS:
                self._lost(f"device failed: {exc.strerror}")
            else:
                log.debug("%s: modem poll stopped: %s", self._path, exc)
            return
        event = modem_delta(self._modem, new)
        self._modem = new
        if event is not None and self._listener is not None:
            self._listener.port_event(ModemStateChanged(state=event))
        self._timer("modem", MODEM_POLL_INTERVAL, self._on_modem_timer)

    def purge(self, *, rx: bool, tx: bool) -> None:
        if self._state is DeviceState.CLOSED:
            raise PortClosed(f"{self.name} is closed")
        if tx:
            self._out.clear()
        if self._state is not DeviceState.PRESENT:
            return
        if rx and tx:
            queue = termios.TCIOFLUSH
        elif rx or tx:
            queue = termios.TCIFLUSH if rx else termios.TCOFLUSH
        else:
            return
        try:
            termios.tcflush(self._fd, queue)
        except termios.error as exc:
            log.debug("%s: tcflush failed: %s", self._path, exc)

    # --- data --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._state is DeviceState.CLOSED:
            raise PortClosed(f"{self.name} is closed")
        if self._state is DeviceState.PRESENT:
            self._out.write(data)
        # Unplugged: a UART with nothing attached drops it too.

    def write_buffer_size(self) -> int:
        return self._out.size

    def pause_reading(self) -> None:
        self._in.pause()

    def resume_reading(self) -> None:
        self._in.resume(arm=self._state is DeviceState.PRESENT)

    def _on_readable(self) -> None:
        # A short read is interactive traffic and goes on at once. A full one means the driver holds
        # more (a tty hands over at most its 4 KiB line buffer per read, and refills it as soon as it
        # is read), so keep reading: one delivery of up to READ_SIZE instead of many 4 KiB ones.
        chunks: list[bytes] = []
        size = 0
        lost: str | None = None
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data = os.read(self._fd, READ_SIZE - size)
            except BlockingIOError:
                break
            except OSError as exc:
                lost = f"read failed: {exc.strerror}"
                break
            if not data:
                # With VMIN = VTIME = 0 a tty answers "nothing now" with 0 bytes, not EAGAIN; only a
                # read the poller announced says end of file.
                if not chunks:
                    lost = "device hung up"
                break
            chunks.append(data)
            size += len(data)
            if len(data) < FULL_READ or size >= READ_SIZE:
                break
        if chunks and self._listener is not None:
            self._listener.port_data(b"".join(chunks))  # one chunk: joined without a copy
        if lost is not None:
            self._lost(lost)
