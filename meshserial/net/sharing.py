"""One shared device and the sessions attached to it.

Policy: at most one read-write session (the *holder*) at a time; any number of read-only watchers. Every
session receives the device's output; only the holder's data and settings reach the device. A read-only
session's set-commands are answered with the values in use and never applied, so a client that insists
sees immediately that nothing changed.

Back-pressure: when the holder's connection cannot keep up, the device is paused (the UART or kernel flow
control then acts, as with a slow local reader), so what the server holds for the holder stays near the
session's flow-control window. A watcher never slows the holder down, and whatever it does (stops
reading, sends FLOWCONTROL-SUSPEND, loses its connection) the server holds at most
:data:`SESSION_HOLD_LIMIT` bytes for it: unacknowledged output, the socket's send buffer and output held
back by a suspend, together. A watcher over that limit is dropped and told why.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshserial.errors import PortError, Refused
from meshserial.ports.base import (
    ModemStateChanged,
    PeerClosed,
    PeerOpened,
    Port,
    PortEvent,
)
from meshserial.proto.rfc2217 import Command, Control, Purge
from meshserial.proto.settings import FlowControl, ModemState, Parity, SerialSettings, StopBits

log = logging.getLogger(__name__)

#: What the server holds for one session at most (a watcher beyond it is dropped): twice the resume
#: window, since the unacknowledged bytes are held once in plain text for a resume and once sealed in the
#: socket's send buffer.
SESSION_HOLD_LIMIT = 4 * 1024 * 1024
SCROLLBACK_BYTES = 64 * 1024


_CONTROL_WORDS: dict[int, str] = {
    Control.FLOW_NONE: "flow control none",
    Control.FLOW_XONXOFF: "flow control XON/XOFF",
    Control.FLOW_HARDWARE: "flow control RTS/CTS",
    Control.BREAK_ON: "BREAK on",
    Control.BREAK_OFF: "BREAK off",
    Control.DTR_ON: "DTR on",
    Control.DTR_OFF: "DTR off",
    Control.RTS_ON: "RTS on",
    Control.RTS_OFF: "RTS off",
}
_PURGE_WORDS: dict[int, str] = {
    Purge.RX: "purge received data",
    Purge.TX: "purge data to send",
    Purge.BOTH: "purge both ways",
}
_SETTING_WORDS = {
    Command.SET_BAUDRATE: "baud",
    Command.SET_DATASIZE: "data bits",
    Command.SET_PARITY: "parity",
    Command.SET_STOPSIZE: "stop bits",
}


def describe_request(command: Command, value: int) -> str | None:
    """A change an RFC 2217 request asks for, in words; ``None`` for queries and anything else."""
    if command in _SETTING_WORDS and value:
        return f"{_SETTING_WORDS[command]} {value}"
    if command is Command.SET_CONTROL:
        return _CONTROL_WORDS.get(value)
    if command is Command.PURGE_DATA:
        return _PURGE_WORDS.get(value)
    return None


class Mode(enum.Enum):
    READ_WRITE = "rw"
    READ_ONLY = "ro"


class Session(Protocol):
    """What the shared port needs from one attached session."""

    label: str

    def deliver(self, data: bytes) -> None:
        """Device output for this session."""

    def device_event(self, event: PortEvent) -> None:
        """Modem-line change or device lost/back."""

    def backlog(self) -> int:
        """Bytes the server holds for this session: queued towards its peer, not yet acknowledged, or
        held back by a suspend."""

    def kick(self, reason: str) -> None:
        """End the session (revoked, replaced, watcher too slow), telling the peer ``reason`` if the
        transport can carry it."""

    def pause_reading(self) -> None:
        """Stop taking data from the peer (the device is backed up)."""

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    label: str
    since: float  # wall-clock time, for humans


class SharedPort:
    """A started :class:`Port` plus the sessions attached to it."""

    def __init__(
        self, name: str, port: Port, *, compat_echo: bool = True, scrollback: int = SCROLLBACK_BYTES
    ) -> None:
        self.name = name
        self.port = port
        # Recent device output with arrival times, replayed to clients that ask (use --scrollback).
        self._scrollback: deque[tuple[float, bytes]] = deque()
        self._scrollback_size = 0
        self._scrollback_limit = scrollback
        # Echo a request the hardware cannot honour instead of the value really in use: pyserial
        # treats any other ack as fatal (see docs/protocol.md, part 1).
        self._compat_echo = compat_echo
        self._sessions: dict[Session, Mode] = {}
        self._holder: Session | None = None
        self._holder_info: Holder | None = None
        self._holder_paused = False
        self._device_paused_by_holder = False
        self._online = True
        self._closed = False
        self._observers: list[Callable[[SharedPort], None]] = []
        # Sessions waiting for the write lock (dict: insertion order, no duplicates, O(1) removal).
        self._free_waiters: dict[Callable[[], None], None] = {}
        #: Set when the underlying port is gone for good (with the exception, if any).
        self.closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.port.start(self)
        self._online = self.port.present

    async def aclose(self) -> None:
        for session in list(self._sessions):
            session.kick("server is shutting down")
        self._sessions.clear()
        self._holder = None
        self._closed = True
        await self.port.aclose()

    @property
    def state(self) -> str:
        """``free``, ``in-use`` or ``offline`` (the vocabulary of adverts and ``list``)."""
        if not self._online:
            return "offline"
        return "in-use" if self._holder is not None else "free"

    @property
    def online(self) -> bool:
        """Whether the device is there (not unplugged, not waited for)."""
        return self._online

    @property
    def holder(self) -> Holder | None:
        return self._holder_info

    def observe(self, callback: Callable[[SharedPort], None]) -> None:
        """Call ``callback(self)`` whenever :attr:`state` or :attr:`holder` may have changed (adverts)."""
        self._observers.append(callback)

    def _changed(self) -> None:
        for callback in list(self._observers):
            try:
                callback(self)
            except Exception:
                log.exception("%s: state observer failed", self.name)

    def attach(self, session: Session, mode: Mode) -> None:
        """Attach ``session``; a second writer is refused with who holds the port and since when."""
        if self._closed:
            raise Refused(f"port {self.name} is closed")
        if mode is Mode.READ_WRITE:
            if self._holder is not None and self._holder is not session:
                info = self._holder_info
                assert info is not None
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.since))
                raise Refused(f"port {self.name} is in use by {info.label} since {since}")
            self._holder = session
            self._holder_info = Holder(label=session.label, since=time.time())
        self._sessions[session] = mode
        log.info("%s attached to %s (%s)", session.label, self.name, mode.value)
        if mode is Mode.READ_WRITE:
            self._changed()

    def detach(self, session: Session) -> None:
        mode = self._sessions.pop(session, None)
        if mode is None:
            return
        log.info("%s detached from %s", session.label, self.name)
        if session is self._holder:
            self._holder = None
            self._holder_info = None
            if self._device_paused_by_holder:
                self._device_paused_by_holder = False
                self.port.resume_reading()
            self._changed()
            waiters, self._free_waiters = self._free_waiters, {}
            for waiter in waiters:
                waiter()  # the first to attach holds the port; the others wait again

    def when_free(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the holder next leaves."""
        self._free_waiters[callback] = None

    def cancel_when_free(self, callback: Callable[[], None]) -> None:
        self._free_waiters.pop(callback, None)

    def mode_of(self, session: Session) -> Mode | None:
        return self._sessions.get(session)

    def recent_output(self, seconds: float) -> bytes:
        """Device output of the last ``seconds`` still held in the scrollback."""
        if seconds <= 0:
            return b""
        since = time.monotonic() - seconds
        return b"".join(chunk for at, chunk in self._scrollback if at >= since)

    def _remember(self, data: bytes) -> None:
        if self._scrollback_limit <= 0:
            return
        self._scrollback.append((time.monotonic(), data))
        self._scrollback_size += len(data)
        while self._scrollback_size > self._scrollback_limit:
            _, old = self._scrollback.popleft()
            self._scrollback_size -= len(old)

    # ---- from sessions ---------------------------------------------------------------------------

    def write(self, session: Session, data: bytes) -> None:
        if session is self._holder:
            self.port.write(data)

    def session_pause_writing(self, session: Session) -> None:
        """``session``'s connection is backed up."""
        if session is self._holder and not self._device_paused_by_holder:
            self._device_paused_by_holder = True
            log.debug("%s: holder backed up; pausing the device", self.name)
            self.port.pause_reading()

    def session_resume_writing(self, session: Session) -> None:
        if session is self._holder and self._device_paused_by_holder:
            self._device_paused_by_holder = False
            log.debug("%s: holder drained; resuming the device", self.name)
            self.port.resume_reading()

    def request(self, session: Session, command: Command, value: int) -> int:
        """Apply one RFC 2217 request from ``session``; return the value for the acknowledgement.

        Every change the holder asks for is logged at INFO (``-v``): line settings, DTR, RTS, BREAK,
        flow control and purges, with what the device really uses when it differs.
        """
        answer = self._request(session, command, value)
        if session is self._holder and (what := describe_request(command, value)) is not None:
            used = "" if answer == value else f" (answered {answer})"
            log.info("%s: %s: %s%s", self.name, session.label, what, used)
        return answer

    def _request(self, session: Session, command: Command, value: int) -> int:
        writable = session is self._holder
        caps = self.port.capabilities
        current = self.port.settings
        match command:
            # The one rule for a setting the device cannot apply (a PTY's data bits, a baud rate the
            # UART lacks, a port without parity): acknowledge the value asked for, and log that it is
            # not in use. RFC 2217 would have us answer with the value in use, but pyserial (and so
            # esptool, miniterm…) treats any other answer as a fatal "remote rejected value", where a
            # real local port would simply have accepted the request. Both roles (share and the
            # gateway of use --listen) answer alike; docs/protocol.md states the rule.
            case Command.SET_BAUDRATE:
                if value and writable:
                    used = self._configure(current.with_changes(baudrate=value), "baud", value, caps.baudrate)
                    return self._answer(value, used.baudrate)
                return current.baudrate
            case Command.SET_DATASIZE:
                if value and writable:
                    if value not in (5, 6, 7, 8):
                        return current.bytesize if not self._compat_echo else value
                    used = self._configure(
                        current.with_changes(bytesize=value), "data bits", value, caps.bytesize
                    )
                    return self._answer(value, used.bytesize)
                return current.bytesize
            case Command.SET_PARITY:
                if value and writable:
                    try:
                        parity = Parity(value)
                    except ValueError:
                        return value if self._compat_echo else int(current.parity)
                    used = self._configure(current.with_changes(parity=parity), "parity", value, caps.parity)
                    return self._answer(value, int(used.parity))
                return int(current.parity)
            case Command.SET_STOPSIZE:
                if value and writable:
                    try:
                        stop = StopBits(value)
                    except ValueError:
                        return value if self._compat_echo else int(current.stopbits)
                    used = self._configure(
                        current.with_changes(stopbits=stop), "stop bits", value, caps.stopbits
                    )
                    return self._answer(value, int(used.stopbits))
                return int(current.stopbits)
            case Command.SET_CONTROL:
                return self._control(value, writable)
            case Command.PURGE_DATA:
                if writable and value in (Purge.RX, Purge.TX, Purge.BOTH):
                    self.port.purge(rx=bool(value & Purge.RX), tx=bool(value & Purge.TX))
                return value
            case _:
                return value

    def _answer(self, asked: int, used: int) -> int:
        """The acknowledgement of a setting: what was asked for (see the rule in :meth:`_request`)."""
        if used != asked:
            log.warning("%s: asked for %d, the device uses %d; acknowledged as asked", self.name, asked, used)
        return asked if self._compat_echo else used

    def _configure(self, wanted: SerialSettings, what: str, value: int, capable: bool) -> SerialSettings:
        if not capable:
            log.info("%s cannot carry %s; acknowledging %s without applying it", self.name, what, value)
            return self.port.settings
        try:
            return self.port.configure(wanted)
        except (PortError, ValueError) as exc:
            log.warning("%s: cannot set %s to %s: %s", self.name, what, value, exc)
            return self.port.settings

    def _control(self, value: int, writable: bool) -> int:
        port = self.port
        dtr, rts, brk = port.control
        flow = port.settings.flow
        flow_value = {
            FlowControl.NONE: Control.FLOW_NONE,
            FlowControl.XONXOFF: Control.FLOW_XONXOFF,
            FlowControl.RTSCTS: Control.FLOW_HARDWARE,
        }[flow]
        inflow_value = {
            FlowControl.NONE: Control.INFLOW_NONE,
            FlowControl.XONXOFF: Control.INFLOW_XONXOFF,
            FlowControl.RTSCTS: Control.INFLOW_HARDWARE,
        }[flow]
        if value in (Control.FLOW_NONE, Control.FLOW_XONXOFF, Control.FLOW_HARDWARE) and writable:
            wanted = {
                Control.FLOW_NONE: FlowControl.NONE,
                Control.FLOW_XONXOFF: FlowControl.XONXOFF,
                Control.FLOW_HARDWARE: FlowControl.RTSCTS,
            }[Control(value)]
            used = self._configure(
                port.settings.with_changes(flow=wanted), "flow control", value, port.capabilities.flow
            )
            return (
                value
                if self._compat_echo
                else {FlowControl.NONE: 1, FlowControl.XONXOFF: 2, FlowControl.RTSCTS: 3}[used.flow]
            )
        if value in (Control.BREAK_ON, Control.BREAK_OFF) and writable:
            port.set_control(break_=value == Control.BREAK_ON)
            return value
        if value in (Control.DTR_ON, Control.DTR_OFF) and writable:
            port.set_control(dtr=value == Control.DTR_ON)
            return value
        if value in (Control.RTS_ON, Control.RTS_OFF) and writable:
            port.set_control(rts=value == Control.RTS_ON)
            return value
        match value:
            case Control.FLOW_QUERY:
                return int(flow_value)
            case Control.BREAK_QUERY:
                return int(Control.BREAK_ON if brk else Control.BREAK_OFF)
            case Control.DTR_QUERY:
                return int(Control.DTR_ON if dtr else Control.DTR_OFF)
            case Control.RTS_QUERY:
                return int(Control.RTS_ON if rts else Control.RTS_OFF)
            case Control.INFLOW_QUERY:
                return int(inflow_value)
        if not writable:
            # A watcher asked to change a line: answer with what is in use.
            if value in (Control.FLOW_NONE, Control.FLOW_XONXOFF, Control.FLOW_HARDWARE):
                return int(flow_value)
            if value in (Control.BREAK_ON, Control.BREAK_OFF):
                return int(Control.BREAK_ON if brk else Control.BREAK_OFF)
            if value in (Control.DTR_ON, Control.DTR_OFF):
                return int(Control.DTR_ON if dtr else Control.DTR_OFF)
            if value in (Control.RTS_ON, Control.RTS_OFF):
                return int(Control.RTS_ON if rts else Control.RTS_OFF)
        # Inbound flow settings and DCD/DSR/DTR flow: not separately configurable here; echo.
        return value

    def modem_state(self) -> ModemState | None:
        return self.port.modem_state()

    # ---- PortListener: from the device --------------------------------------------------------------

    def port_data(self, data: bytes) -> None:
        self._remember(data)
        for session, mode in list(self._sessions.items()):
            if mode is Mode.READ_ONLY and (held := session.backlog()) > SESSION_HOLD_LIMIT:
                log.warning(
                    "%s: dropping watcher %s: %d bytes of output waiting for it",
                    self.name,
                    session.label,
                    held,
                )
                self.detach(session)
                session.kick(
                    f"watcher too slow: more than {SESSION_HOLD_LIMIT // (1024 * 1024)} MiB of output "
                    "waiting for it (reconnect to continue from the current output)"
                )
                continue
            session.deliver(data)

    def port_event(self, event: PortEvent) -> None:
        if isinstance(event, PeerClosed):
            self._online = False
            log.warning("%s: device gone%s", self.name, f" ({event.reason})" if event.reason else "")
        elif isinstance(event, PeerOpened):
            self._online = True
            log.info("%s: device back", self.name)
        elif isinstance(event, ModemStateChanged):
            log.info("%s: modem lines %s", self.name, event.state.describe())
        else:
            return
        if not isinstance(event, ModemStateChanged):
            self._changed()
        for session in list(self._sessions):
            session.device_event(event)

    def port_pause_writing(self) -> None:
        # The device cannot take more: stop reading from the holder's connection.
        if self._holder is not None:
            self._holder.pause_reading()

    def port_resume_writing(self) -> None:
        if self._holder is not None:
            self._holder.resume_reading()

    def port_closed(self, exc: BaseException | None) -> None:
        self._online = False
        self._changed()
        if not self.closed.done():
            self.closed.set_result(exc)
        if exc is not None and not self._closed:
            log.error("%s: port closed: %s", self.name, exc)
        for session in list(self._sessions):
            session.kick("port closed")
