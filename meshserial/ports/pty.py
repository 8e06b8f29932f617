"""The client-side virtual serial port: a Linux PTY whose slave the application opens.

Theory of operation:

* ``start`` creates the pair and makes the slave raw: a fresh PTY is cooked with ``ECHO`` on, which
  would send device output straight back to the device. It sets ``EXTPROC`` in the slave's local
  flags, because only then does *every* ``tcsetattr`` of the application (even one that changes
  nothing) raise ``TIOCPKT_IOCTL`` on the master. It applies the initial baud, puts the master in
  packet mode (each read of the master returns either a 0 byte followed by data, or one status byte in
  which several events may be coalesced) and **closes our slave fd**: while no one has the slave open,
  the master reports ``POLLHUP`` and reads fail with ``EIO``, so the application's open and close
  become visible.
* States, driven by the kernel:

  - ``IDLE`` (no application): the master is *not* registered with the loop, because a hung-up master
    is always readable: ``add_reader`` would call us back in a busy loop. A 100 ms timer polls for
    POLLHUP to clear. Bytes an application wrote and closed before we noticed (``echo AT >
    /dev/pts/N``) and status bytes are still drained here. Data written by the network is discarded,
    like a UART with nobody listening.
  - ``OPEN``: ``add_reader`` on the master. Packet byte 0 means data; anything else is a coalesced status
    byte: ``IOCTL`` -> re-read termios (termios calls on a master act on its slave, so the master sees
    the application's settings; ``TCGETS2`` gives custom rates, which ``tcgetattr`` only shows as
    ``BOTHER``) and report baud/stop bits/flow if they changed; ``FLUSHREAD``/``FLUSHWRITE`` (the
    application called ``tcflush``) -> :class:`PurgeRequested`. ``EIO`` means the application closed ->
    ``PeerClosed``, back to IDLE. A 1 s termios poll is the safety net for applications that clear
    ``EXTPROC`` (one that builds its local flags from zero, or runs ``stty sane``): from then on no
    ``TIOCPKT_IOCTL`` arrives.
  - ``CLOSED`` after :meth:`PtyPort.aclose`.

* Deliberately unsupported, because the kernel keeps them from the master: data bits and parity (a PTY
  is forced to 8 data bits without parity, whatever the application sets), modem lines (every
  modem-control ioctl fails with ``ENOTTY``, on either end), BREAK (``tcsendbreak`` on a PTY succeeds
  and does nothing; the master never hears of it), drain (``tcdrain`` returns at once, with data still
  unread in the master). See :data:`PTY_LIMITATIONS`.
* ``configure`` (settings from the remote device) rewrites only the slave's speed, so the application
  sees the real rate; the resulting ``TIOCPKT_IOCTL`` echo is absorbed by diffing against the termios
  we last observed, not against the remote settings.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import grp
import logging
import os
import select
import termios
from pathlib import Path

from meshserial.errors import PortClosed, PortError, UsageError
from meshserial.ports import termios_util
from meshserial.ports.base import (
    Capabilities,
    PeerClosed,
    PeerOpened,
    Port,
    PortListener,
    PurgeRequested,
    RemembersControl,
    SettingsChanged,
    WriterFlow,
)
from meshserial.ports.fdio import FdReader, FdWriter
from meshserial.proto.settings import ModemState, SerialSettings

log = logging.getLogger(__name__)

PTY_LIMITATIONS = (
    "A PTY carries the baud rate, stop bits, flow control and purges an application sets, but not data "
    "bits or parity (the kernel forces 8N), nor DTR/RTS/CTS/DSR/CD/RI or BREAK. Choose the remote framing "
    "with `use --baud`, `--databits`, `--parity` and `--stopbits`; applications that toggle modem lines "
    "or send BREAK need `rfc2217://` (pyserial) instead of the virtual port."
)

CAPABILITIES = Capabilities(bytesize=False, parity=False, modem_lines=False, break_=False)

# The status bits of a packet-mode (TIOCPKT) read; Python's termios module does not export them all.
TIOCPKT_DATA = 0x00
TIOCPKT_FLUSHREAD = 0x01
TIOCPKT_FLUSHWRITE = 0x02
TIOCPKT_STOP = 0x04
TIOCPKT_START = 0x08
TIOCPKT_IOCTL = 0x40

IDLE_POLL_INTERVAL = 0.1
OPEN_POLL_INTERVAL = 1.0
READ_SIZE = 64 * 1024
SHORT_PACKET = 512
# A status byte or a burst per wake-up; bounded so one busy application cannot starve the loop.
MAX_READS_PER_WAKEUP = 16


class PtyState(enum.Enum):
    NEW = "new"
    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


class PtyPort(RemembersControl, Port):
    """A virtual serial port for local applications, backed by a PTY pair."""

    def __init__(
        self,
        *,
        link: Path | None = None,
        settings: SerialSettings = SerialSettings(),  # noqa: B008 - frozen dataclass
        mode: int | None = None,
        group: str | None = None,
        hold: int = 0,
    ) -> None:
        """``mode``: permissions of the PTY: by default 0600, only its owner (``openpty`` hands out
        0620 with group ``tty``, which lets others write to it, and what crosses it is a remote device's
        traffic); 0660 when a ``group`` is given, for a service user's application.

        ``hold``: keep up to this many bytes that arrive while no application has the port open,
        and deliver them when one opens it (for replayed scrollback); 0 drops them like a UART."""
        self.name = str(link) if link is not None else "pty"
        self._hold_limit = hold
        self._held = bytearray()
        self.capabilities = CAPABILITIES
        self._link = link
        self._settings = settings
        self._mode = mode if mode is not None else (0o660 if group is not None else 0o600)
        self._group = group
        self._state = PtyState.NEW
        self._master = -1
        self._path = ""
        self._listener: PortListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller = select.poll()
        self._timer: asyncio.TimerHandle | None = None
        self._in = FdReader(self._on_readable)
        self._flow = WriterFlow()
        self._out = FdWriter(
            flow=self._flow, on_error=lambda exc: log.debug("%s: write failed: %s", self.name, exc)
        )
        # DTR, RTS and BREAK as last set, and only that: a PTY has none of these lines.
        self._control = (False, False, False)
        # What the application's termios looked like the last time we read it (baud, stop bits, flow).
        self._seen: tuple[object, ...] = ()
        self._link_created = False

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The slave device path (``/dev/pts/N``); empty before :meth:`start`."""
        return self._path

    @property
    def state(self) -> PtyState:
        return self._state

    async def start(self, listener: PortListener) -> None:
        if self._state is not PtyState.NEW:
            raise PortError(f"{self.name}: already started")
        self._loop = asyncio.get_running_loop()
        self._listener = self._flow.listener = listener
        gid = -1
        if self._group is not None:
            try:
                gid = grp.getgrnam(self._group).gr_gid
            except KeyError as exc:
                raise UsageError(f"unknown group {self._group!r} for the virtual port") from exc
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise PortError(f"cannot create a PTY: {exc.strerror}") from exc
        try:
            termios_util.make_raw(slave, extproc=True)
            termios_util.set_baud(slave, self._settings.baudrate)
            os.fchmod(slave, self._mode)
            if gid != -1:
                os.fchown(slave, -1, gid)
            self._path = os.ttyname(slave)
            termios_util.set_packet_mode(master)
            os.set_blocking(master, False)
        except (OSError, termios.error) as exc:
            os.close(master)
            os.close(slave)
            raise PortError(f"cannot set up the PTY: {exc}") from exc
        # With no slave fd of ours open, the master is hung up exactly while no application has the
        # slave open: that is how we see an application open and close the port.
        os.close(slave)
        self._master = self._in.fd = self._out.fd = master
        self._poller.register(master, select.POLLIN | select.POLLPRI)
        self._seen = self._observe()
        self.name = self._path
        self._state = PtyState.IDLE
        if self._link is not None:
            try:
                self.create_link()
            except PortError:
                # Start failed: the owner gets the exception, not port_closed.
                self._listener = self._flow.listener = None
                await self.aclose()
                raise
        log.info("virtual port %s ready (%s)", self._path, self._settings.describe())
        self._schedule(IDLE_POLL_INTERVAL)

    async def aclose(self) -> None:
        if self._state is PtyState.CLOSED:
            return
        was_started = self._state is not PtyState.NEW
        self._state = PtyState.CLOSED
        self._cancel_timer()
        self._in.disarm()
        self._in.fd = -1
        self._out.detach()
        self.remove_link()
        if self._master >= 0:
            self._poller.unregister(self._master)
            os.close(self._master)
            self._master = -1
        if was_started and self._listener is not None:
            self._listener.port_closed(None)

    # --- stable link ---------------------------------------------------------------------------

    def create_link(self) -> None:
        """Point ``link`` at the slave atomically (a temporary symlink renamed over it)."""
        if self._link is None or not self._path:
            return
        link = self._link
        if (link.exists() or link.is_symlink()) and not link.is_symlink():
            raise PortError(f"{link} exists and is not a symlink; refusing to replace it")
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        try:
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(self._path, tmp)
            os.replace(tmp, link)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise PortError(f"cannot create the link {link}: {exc.strerror}") from exc
        self._link_created = True
        log.info("linked %s -> %s", link, self._path)

    def remove_link(self) -> None:
        """Remove ``link`` if it still points at our slave (never someone else's file)."""
        if self._link is None or not self._link_created:
            return
        self._link_created = False
        try:
            if self._link.is_symlink() and os.readlink(self._link) == self._path:
                self._link.unlink()
        except OSError as exc:
            log.warning("cannot remove the link %s: %s", self._link, exc.strerror)

    # --- Port interface ------------------------------------------------------------------------

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    def configure(self, settings: SerialSettings) -> SerialSettings:
        self._check_open()
        if settings == self._settings:
            return self._settings
        old = self._settings
        self._settings = settings
        if settings.baudrate != old.baudrate and self._master >= 0:
            try:
                termios_util.set_baud(self._master, settings.baudrate)
            except (OSError, termios.error) as exc:
                log.warning(
                    "%s: cannot show %d baud to the application: %s", self.name, settings.baudrate, exc
                )
            # Absorb our own TIOCPKT_IOCTL echo: what the app sees now is "known".
            self._seen = self._observe()
        return self._settings

    def write(self, data: bytes) -> None:
        self._check_open()
        if not data:
            return
        if self._state is PtyState.IDLE and not self._hung_up():
            # An application opened the port since the last poll: notice it now rather than drop
            # bytes that arrive in between.
            self._to_open()
        if self._state is not PtyState.OPEN:
            if self._hold_limit:
                self._held += data
                del self._held[: max(0, len(self._held) - self._hold_limit)]
            return  # nobody has the port open: a UART would drop it too
        self._out.write(data)

    def write_buffer_size(self) -> int:
        return self._out.size

    def pause_reading(self) -> None:
        self._in.pause()

    def resume_reading(self) -> None:
        self._in.resume(arm=self._state is PtyState.OPEN)

    def modem_state(self) -> ModemState | None:
        return None

    def purge(self, *, rx: bool, tx: bool) -> None:
        self._check_open()
        if rx:
            self._out.clear()
            self._flush(termios.TCOFLUSH)
        if tx:
            self._flush(termios.TCIFLUSH)

    # --- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is PtyState.CLOSED:
            raise PortClosed(f"{self.name} is closed")

    def _flush(self, queue: int) -> None:
        if self._master < 0:
            return
        try:
            termios.tcflush(self._master, queue)
        except termios.error as exc:
            log.debug("%s: tcflush failed: %s", self.name, exc)

    def _observe(self) -> tuple[object, ...]:
        try:
            view = termios_util.read_line(self._master)
        except (OSError, termios.error) as exc:
            log.debug("%s: cannot read termios: %s", self.name, exc)
            return self._seen
        return (view.baudrate, view.stopbits, view.flow)

    def _check_settings(self) -> None:
        """Re-read the application's termios; report baud/stop bits/flow when they changed."""
        try:
            view = termios_util.read_line(self._master)
        except (OSError, termios.error) as exc:
            log.debug("%s: cannot read termios: %s", self.name, exc)
            return
        seen = (view.baudrate, view.stopbits, view.flow)
        if seen == self._seen:
            return
        self._seen = seen
        new = view.merge_into(self._settings, framing=False)
        if new == self._settings:
            return
        log.debug("%s: application set %s", self.name, new.describe())
        self._settings = new
        if self._listener is not None:
            self._listener.port_event(SettingsChanged(settings=new))

    def _schedule(self, delay: float) -> None:
        assert self._loop is not None
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hung_up(self) -> bool:
        """Whether no application has the slave open (the master reports POLLHUP)."""
        return any(ev & select.POLLHUP for _fd, ev in self._poller.poll(0))

    def _on_timer(self) -> None:
        self._timer = None
        if self._state is PtyState.IDLE:
            revents = 0
            for _fd, ev in self._poller.poll(0):
                revents |= ev
            if not revents & select.POLLHUP:
                self._to_open()
            elif revents & (select.POLLIN | select.POLLPRI):
                # Status bytes (ours or a quick application's) and bytes from an application that
                # already closed again; reading stops at EIO.
                self._read_packets(idle=True)
        elif self._state is PtyState.OPEN:
            self._check_settings()
        if self._state is PtyState.IDLE:
            self._schedule(IDLE_POLL_INTERVAL)
        elif self._state is PtyState.OPEN:
            self._schedule(OPEN_POLL_INTERVAL)

    def _to_open(self) -> None:
        self._state = PtyState.OPEN
        log.info("%s: application opened the port", self.name)
        if self._held:
            held, self._held = bytes(self._held), bytearray()
            self.write(held)
        if self._listener is not None:
            self._listener.port_event(PeerOpened())
        self._check_settings()
        if self._state is PtyState.OPEN:
            self._in.arm()

    def _to_idle(self, reason: str) -> None:
        self._state = PtyState.IDLE
        self._in.disarm()
        self._out.clear()
        log.info("%s: %s", self.name, reason)
        if self._listener is not None:
            self._listener.port_event(PeerClosed(reason=reason))
        self._schedule(IDLE_POLL_INTERVAL)

    def _on_readable(self) -> None:
        self._read_packets(idle=False)

    def _read_packets(self, *, idle: bool) -> None:
        # Data packets read in one wakeup are handed on as one chunk (fewer, larger writes downstream);
        # anything else (a status byte, a state change) first flushes what came before it.
        pending: list[bytes] = []
        try:
            self._read_loop(idle, pending)
        finally:
            self._deliver(pending)

    def _deliver(self, pending: list[bytes]) -> None:
        if pending and self._listener is not None:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            self._listener.port_data(data)

    def _read_loop(self, idle: bool, pending: list[bytes]) -> None:
        opened_here = False
        size = 0
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                packet = os.read(self._master, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.EBADF):
                    log.warning("%s: read failed: %s", self.name, exc)
                if idle and not opened_here:
                    return
                self._deliver(pending)
                self._to_idle("application closed the port")
                return
            if not packet:
                if not idle or opened_here:
                    self._deliver(pending)
                    self._to_idle("application closed the port")
                return
            status = packet[0]
            if status == TIOCPKT_DATA:
                if len(packet) > 1 and self._listener is not None:
                    if idle and not opened_here:
                        # An application opened, wrote and closed between two polls.
                        opened_here = True
                        self._state = PtyState.OPEN
                        self._listener.port_event(PeerOpened())
                    pending.append(packet[1:])
                    size += len(packet) - 1
                    if size >= READ_SIZE:
                        self._deliver(pending)
                        size = 0
                    if len(packet) < SHORT_PACKET and not idle:
                        # Interactive traffic: the next read would only say EAGAIN. The reader is
                        # level-triggered, so anything that arrives later wakes us again.
                        return
            else:
                self._deliver(pending)
                size = 0
                self._on_status(status)
            if self._state is not PtyState.OPEN and not idle:
                return
            if not idle and self._in.paused:
                return

    def _on_status(self, status: int) -> None:
        if status & TIOCPKT_IOCTL:
            self._check_settings()
        rx = bool(status & TIOCPKT_FLUSHREAD)
        tx = bool(status & TIOCPKT_FLUSHWRITE)
        if rx or tx:
            if rx:
                self._out.clear()
            if self._listener is not None:
                self._listener.port_event(PurgeRequested(rx=rx, tx=tx))
        if status & (TIOCPKT_STOP | TIOCPKT_START):
            log.debug(
                "%s: application output %s by XON/XOFF",
                self.name,
                "stopped" if status & TIOCPKT_STOP else "started",
            )
