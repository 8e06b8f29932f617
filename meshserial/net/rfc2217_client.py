"""A remote serial port reached through an RFC 2217 server, presented as a local :class:`Port`.

``RemotePort`` is the asyncio protocol of the connection *and* a ``Port``: the bridge that connects a PTY
to a remote device is the same :class:`~meshserial.net.link.PortLink` that could connect two local
ports. Settings flow as requests; the server's acknowledgements and notifications flow back as
:class:`SettingsChanged` / :class:`ModemStateChanged` events.

``configure`` is optimistic: it sends only the fields that changed and returns at once with the
requested settings, because a remote acknowledgement takes a round trip and some servers never send one
(ser2net on a port without modem lines, see docs/protocol.md, part 1). A different value in an
acknowledgement is reported later as a ``SettingsChanged`` event.
"""

from __future__ import annotations

import asyncio
import logging

from meshserial.addresses import format_hostport
from meshserial.errors import ConnectionLost, MeshserialError, PortClosed, ProtocolError
from meshserial.logonce import LogOnce
from meshserial.net.tcp import ReceiveBuffer, connect, tune_socket
from meshserial.ports.base import Capabilities, ModemStateChanged, Port, PortListener, SettingsChanged
from meshserial.proto import rfc2217
from meshserial.proto.portcontrol import FLOW_CONTROL
from meshserial.proto.rfc2217 import Command, Control, Purge
from meshserial.proto.settings import ModemState, Parity, SerialSettings, StopBits
from meshserial.proto.text import escape

log = logging.getLogger(__name__)
_log_once = LogOnce(log)

# The SET-CONTROL value of each kind of flow control, and back (acknowledgements carry plain ints).
_CONTROL_FLOW = {int(control): flow for flow, control in FLOW_CONTROL.items()}


class RemotePort(Port, ReceiveBuffer):
    """The client end of an RFC 2217 connection."""

    def __init__(self, *, name: str, reply_timeout: float = 3.0, send_flow_suspend: bool = False) -> None:
        self.name = name
        self.capabilities = Capabilities()
        self._engine = rfc2217.ClientSide(reply_timeout=reply_timeout, send_flow_suspend=send_flow_suspend)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._listener: PortListener | None = None
        self._early: list[bytes] = []  # data that arrived before start()
        self._settings = SerialSettings()
        self._known = False  # whether _settings came from the server
        self._control = (True, True, False)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._paused_by_server = False
        self._lines_seen: ModemState | None = None
        self.active: asyncio.Future[None] = self._loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = self._loop.create_future()

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any TCP transport: asyncio's own or uvloop's (which does not subclass asyncio.Transport).
        self._transport = transport  # type: ignore[assignment]
        tune_socket(transport)
        self._engine.initiate(self._loop.time())
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._engine.receive_data(data, self._loop.time())
        except ProtocolError as exc:
            self._fail(exc)
            return
        self._handle(events)
        self._flush()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        reason: BaseException | None = exc
        if not self.active.done():
            self.active.set_exception(ConnectionLost(self._refusal()))
            self.active.exception()  # mark retrieved; connect() reports it
        if not self.lost.done():
            self.lost.set_result(reason)
        if self._listener is not None:
            self._listener.port_closed(_lost(self.name, exc))

    def _refusal(self) -> str:
        """Why the server closed before RFC 2217 was agreed, as far as we can tell: a server that
        refuses says so in text (ser2net's and our "port in use", a meshserial server's pointer to its
        encrypted protocol); one that says nothing is probably not an RFC 2217 server at all."""
        said = b"".join(self._early).decode("utf-8", "replace").strip()
        if said:
            return f"{self.name} closed the connection, saying: {escape(' '.join(said.split()), 200)}"
        return (
            f"{self.name} closed the connection before RFC 2217 was agreed: not an RFC 2217 server? "
            "(a meshserial server's encrypted port takes NAME@HOST:PORT)"
        )

    def pause_writing(self) -> None:
        if self._listener is not None:
            self._listener.port_pause_writing()

    def resume_writing(self) -> None:
        if self._listener is not None:
            self._listener.port_resume_writing()

    # ---- engine events ---------------------------------------------------------------------------

    def _handle(self, events: list[rfc2217.Event]) -> None:
        for event in events:
            match event:
                case rfc2217.Data(data=payload):
                    if self._listener is not None:
                        self._listener.port_data(payload)
                    else:
                        self._early.append(payload)
                case rfc2217.ComPortActive():
                    if not self.active.done():
                        self.active.set_result(None)
                case rfc2217.ComPortRefused():
                    self._fail(ProtocolError(f"{self.name} refused RFC 2217 (not a COM port server)"))
                case rfc2217.Reply(command=command, value=value):
                    self._reply(command, value)
                case rfc2217.ReplyTimeout(command=command, value=value):
                    _log_once.warning(
                        self.name, f"no acknowledgement for {command.name}", f"value {value}; going on"
                    )
                case rfc2217.FlowSuspend():
                    if not self._paused_by_server and self._listener is not None:
                        self._paused_by_server = True
                        self._listener.port_pause_writing()
                case rfc2217.FlowResume():
                    if self._paused_by_server and self._listener is not None:
                        self._paused_by_server = False
                        self._listener.port_resume_writing()
                case rfc2217.Notice(reason=reason):
                    _log_once.warning(self.name, reason)
                case _:
                    pass

    def _reply(self, command: Command, value: int) -> None:
        current = self._settings
        new = current
        try:
            match command:
                case Command.SET_BAUDRATE if value > 0:
                    new = current.with_changes(baudrate=value)
                case Command.SET_DATASIZE if value in (5, 6, 7, 8):
                    new = current.with_changes(bytesize=value)
                case Command.SET_PARITY if value:
                    new = current.with_changes(parity=Parity(value))
                case Command.SET_STOPSIZE if value:
                    new = current.with_changes(stopbits=StopBits(value))
                case Command.SET_CONTROL if value in _CONTROL_FLOW:
                    new = current.with_changes(flow=_CONTROL_FLOW[value])
                case Command.NOTIFY_MODEMSTATE:
                    state = ModemState(value & 0xFF)
                    if state & ModemState.lines() != (self._lines_seen or ModemState(0)) & ModemState.lines():
                        log.info("%s: modem lines %s", self.name, state.describe())
                    self._lines_seen = state
                    if self._listener is not None:
                        self._listener.port_event(ModemStateChanged(state=state))
                    return
                case _:
                    return
        except ValueError:
            _log_once.warning(self.name, f"odd value in {command.name} reply", str(value))
            return
        if new != current:
            self._settings = new
            if self._listener is not None:
                self._listener.port_event(SettingsChanged(settings=new))

    def _fail(self, exc: BaseException) -> None:
        if not self.active.done():
            self.active.set_exception(exc)
            self.active.exception()
        else:
            log.warning("%s: %s", self.name, exc)
        if self._transport is not None:
            self._transport.close()

    # ---- Port ------------------------------------------------------------------------------------

    async def start(self, listener: PortListener) -> None:
        if self._closed:
            raise PortClosed(f"connection to {self.name} is closed")
        self.bind(listener)

    def bind(self, listener: PortListener) -> None:
        """Start delivering callbacks to ``listener`` (data that arrived earlier first)."""
        self._listener = listener
        early, self._early = self._early, []
        for chunk in early:
            listener.port_data(chunk)

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._engine.send_data(data)
        self._flush()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.resume_reading()

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    def configure(self, settings: SerialSettings) -> SerialSettings:
        """Send what differs from the settings last known or requested (all of it the first time)."""
        old = self._settings
        first = not self._known
        now = self._loop.time()
        # RFC 2217 recommends this order: some hardware accepts parity only with a matching data size.
        if first or settings.baudrate != old.baudrate:
            self._engine.request(Command.SET_BAUDRATE, settings.baudrate, now)
        if first or settings.bytesize != old.bytesize:
            self._engine.request(Command.SET_DATASIZE, settings.bytesize, now)
        if first or settings.parity != old.parity:
            self._engine.request(Command.SET_PARITY, int(settings.parity), now)
        if first or settings.stopbits != old.stopbits:
            self._engine.request(Command.SET_STOPSIZE, int(settings.stopbits), now)
        if first or settings.flow != old.flow:
            self._engine.request(Command.SET_CONTROL, int(FLOW_CONTROL[settings.flow]), now)
        if first or settings != old:
            log.info("%s: settings %s", self.name, settings.describe())
        self._settings = settings
        self._known = True
        self._flush()
        return settings

    def set_control(
        self, *, dtr: bool | None = None, rts: bool | None = None, break_: bool | None = None
    ) -> None:
        now = self._loop.time()
        old_dtr, old_rts, old_brk = self._control
        if dtr is not None:
            self._engine.request(Command.SET_CONTROL, Control.DTR_ON if dtr else Control.DTR_OFF, now)
        if rts is not None:
            self._engine.request(Command.SET_CONTROL, Control.RTS_ON if rts else Control.RTS_OFF, now)
        if break_ is not None:
            self._engine.request(Command.SET_CONTROL, Control.BREAK_ON if break_ else Control.BREAK_OFF, now)
        self._control = (
            old_dtr if dtr is None else dtr,
            old_rts if rts is None else rts,
            old_brk if break_ is None else break_,
        )
        asked = (("DTR", dtr), ("RTS", rts), ("BREAK", break_))
        log.info(
            "%s: %s", self.name, ", ".join(f"{n} {'on' if v else 'off'}" for n, v in asked if v is not None)
        )
        self._flush()

    @property
    def control(self) -> tuple[bool, bool, bool]:
        return self._control

    def modem_state(self) -> ModemState | None:
        return self._engine.modem_state

    def purge(self, *, rx: bool, tx: bool) -> None:
        if not (rx or tx):
            return
        value = Purge.BOTH if rx and tx else (Purge.RX if rx else Purge.TX)
        log.info(
            "%s: purge %s",
            self.name,
            {Purge.RX: "received data", Purge.TX: "data to send"}.get(value, "both ways"),
        )
        self._engine.request(Command.PURGE_DATA, int(value), self._loop.time())
        self._flush()

    async def aclose(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()
        if self._transport is not None:
            await asyncio.shield(self.lost)

    # ---- internals -------------------------------------------------------------------------------

    def _flush(self) -> None:
        out = self._engine.data_to_send()
        if out and self._transport is not None and not self._closed:
            self._transport.write(out)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self._engine.get_timer()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._handle(self._engine.handle_timer(self._loop.time()))
        self._flush()


def _lost(name: str, exc: BaseException | None) -> BaseException | None:
    """What the port's user is told when the connection ends: ``None`` for a clean end, our own
    errors as they are (they already say why), anything else as :class:`ConnectionLost`."""
    if exc is None or isinstance(exc, MeshserialError):
        return exc
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    return ConnectionLost(f"connection to {name} lost: {reason}")


async def connect_rfc2217(
    host: str, port: int, *, name: str | None = None, timeout: float = 5.0, reply_timeout: float = 3.0
) -> RemotePort:
    """Connect to an RFC 2217 server and wait until COM-PORT-OPTION is agreed."""
    label = name or format_hostport(host, port)
    _, remote = await connect(
        host, port, lambda: RemotePort(name=label, reply_timeout=reply_timeout), timeout=timeout
    )
    try:
        async with asyncio.timeout(timeout):
            await remote.active
    except TimeoutError:
        await remote.aclose()
        raise ProtocolError(
            f"{label} does not speak RFC 2217 (no COM-PORT-OPTION within {timeout:g} s)"
        ) from None
    except BaseException:
        await remote.aclose()
        raise
    return remote
