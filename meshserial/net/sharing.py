"""One shared device and the sessions attached to it.

Policy: at most one read-write session (the *holder*) at a time; any number of read-only watchers. Every
session receives the device's output; only the holder's data and settings reach the device. A read-only
session's set-commands are answered with the values in use and never applied, so a client that insists
sees immediately that nothing changed. What each RFC 2217 request does to the port, and what it is
answered, is decided in :mod:`meshserial.proto.portcontrol`; :meth:`SharedPort.request` carries it out.

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
from typing import Protocol, assert_never

from meshserial.errors import PortError, Refused
from meshserial.ports.base import (
    ModemStateChanged,
    PeerClosed,
    PeerOpened,
    Port,
    PortEvent,
)
from meshserial.proto.portcontrol import (
    Action,
    Configure,
    NoChange,
    NotCarried,
    PortState,
    PurgeData,
    SetLines,
    describe_request,
    plan_request,
)
from meshserial.proto.rfc2217 import Command
from meshserial.proto.settings import ModemState, SerialSettings

log = logging.getLogger(__name__)

#: What the server holds for one session at most (a watcher beyond it is dropped): twice the resume
#: window, since the unacknowledged bytes are held once in plain text for a resume and once sealed in the
#: socket's send buffer.
SESSION_HOLD_LIMIT = 4 * 1024 * 1024
SCROLLBACK_BYTES = 64 * 1024


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
        # treats any other ack as fatal (the rule: meshserial.proto.portcontrol; docs/protocol.md).
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

        What a request does and how it is answered (watchers, queries, the compatibility echo) is
        decided by :func:`~meshserial.proto.portcontrol.plan_request`; here the plan is carried out.
        Every change the holder asks for is logged at INFO (``-v``): line settings, DTR, RTS, BREAK,
        flow control and purges, with what the device really uses when it differs.
        """
        port = self.port
        writable = session is self._holder
        dtr, rts, brk = port.control
        state = PortState(
            settings=port.settings, dtr=dtr, rts=rts, break_=brk, capabilities=port.capabilities
        )
        plan = plan_request(command, value, writable=writable, port=state, compat_echo=self._compat_echo)
        used = self._apply(plan.action, value)
        answer = plan.answer(used)
        if (in_use := plan.unmet(used)) is not None:
            log.warning(
                "%s: asked for %d, the device uses %d; acknowledged %s",
                self.name,
                value,
                in_use,
                "as asked" if self._compat_echo else "with the value in use",
            )
        if writable and (what := describe_request(command, value)) is not None:
            answered = "" if answer == value else f" (answered {answer})"
            log.info("%s: %s: %s%s", self.name, session.label, what, answered)
        return answer

    def _apply(self, action: Action, value: int) -> SerialSettings:
        """Carry out ``action`` (asked for with ``value``); return the settings in use afterwards."""
        port = self.port
        match action:
            case NoChange():
                pass
            case Configure(settings=wanted, setting=setting):
                try:
                    return port.configure(wanted)
                except (PortError, ValueError) as exc:
                    log.warning("%s: cannot set %s to %s: %s", self.name, setting.value, value, exc)
            case NotCarried(setting=setting):
                log.info(
                    "%s cannot carry %s; acknowledging %s without applying it",
                    self.name,
                    setting.value,
                    value,
                )
            case SetLines(dtr=dtr, rts=rts, break_=brk):
                port.set_control(dtr=dtr, rts=rts, break_=brk)
            case PurgeData(rx=rx, tx=tx):
                port.purge(rx=rx, tx=tx)
            case _:
                assert_never(action)
        return port.settings

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
