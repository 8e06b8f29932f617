"""The server end of one RFC 2217 connection, bridged to a :class:`SharedPort`.

Used for plain RFC 2217 (``share --rfc2217``, the local gateway of ``use --listen``) and, inside the
secure channel, for authenticated sessions: the transport handed to :meth:`connection_made` only needs
``write``, ``close``, ``pause_reading``, ``resume_reading``, ``get_write_buffer_size`` and
``get_extra_info`` — an asyncio TCP transport or the secure channel's transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshserial.errors import ProtocolError, Refused
from meshserial.logonce import LogOnce
from meshserial.net.sharing import Mode, SharedPort
from meshserial.net.tcp import ReceiveBuffer, tune_socket
from meshserial.ports.base import ModemStateChanged, PeerClosed, PeerOpened, PortEvent
from meshserial.proto import rfc2217
from meshserial.proto.settings import ModemState

log = logging.getLogger(__name__)
_log_once = LogOnce(log)

#: After this much output queued towards a client that stopped reading, stop reading the device.
PAUSE_HIGH_WATER = 1024 * 1024
#: How long a closed connection may take to hand over what is still queued before it is cut off.
CLOSE_GRACE = 5.0
#: How long a new plain connection waits for a port another client holds before it is told "busy".
REOPEN_GRACE = 1.0


def peer_label(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer) if peer else "peer"


class Rfc2217ServerSession(ReceiveBuffer):
    """One client connection speaking RFC 2217 to a shared port."""

    def __init__(
        self,
        shared: SharedPort,
        *,
        mode: Mode = Mode.READ_WRITE,
        label: str | None = None,
        attach: bool = True,
        on_close: Callable[[Rfc2217ServerSession], None] | None = None,
    ) -> None:
        """``attach=False`` when the caller has already attached this session to ``shared`` (the
        secure server does, so that a refusal becomes a clean ``deny`` message)."""
        self._target = shared
        self._attach = attach
        self._mode = mode
        self.label = label or "peer"
        self.on_close = on_close
        self._engine = rfc2217.ServerSide()
        self._transport: asyncio.Transport | None = None
        self._shared: SharedPort | None = None if attach else shared
        self._peer = "peer"
        self._closing = False
        self._suspended_output: list[bytes] = []
        self._suspended_size = 0
        self._scrollback = b""
        #: Ends the session telling the peer why (the secure session's stream sets it); a plain TCP
        #: connection has no place for a reason and is just closed.
        self.end_with_reason: Callable[[str], None] | None = None
        #: Told when the device goes away (False) or comes back (True); the secure server passes it on.
        self.on_device: Callable[[bool], None] | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._give_up: asyncio.TimerHandle | None = None  # while waiting for a busy port
        self.closed = asyncio.get_running_loop().create_future()

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Any TCP transport: asyncio's own or uvloop's (which does not subclass asyncio.Transport).
        self._transport = transport  # type: ignore[assignment]
        tune_socket(transport)
        self._peer = peer_label(transport)
        if self.label == "peer":
            self.label = self._peer
        if self._attach and not self._try_attach():
            return
        self._open()

    def _open(self) -> None:
        """Attached: start the RFC 2217 conversation."""
        shared = self._target
        state = shared.modem_state()
        self._engine = rfc2217.ServerSide(modem_state=state if state is not None else _default_modem(shared))
        self._engine.initiate()
        self._flush()
        if self._scrollback:
            scrollback, self._scrollback = self._scrollback, b""
            self.deliver(scrollback)

    def _try_attach(self) -> bool:
        """Attach to the port; if another client holds it, wait :data:`REOPEN_GRACE` for it to go.

        The holder may be a connection its client has just closed, whose end we have not read yet: a
        tool that closes the port and opens it again at once (test harnesses and flashing tools do it
        dozens of times a minute) must not be told "busy" by its own previous connection.
        """
        transport = self._transport
        assert transport is not None
        try:
            self._target.attach(self, self._mode)
        except Refused as exc:
            if self._give_up is None:
                transport.pause_reading()
                loop = asyncio.get_running_loop()
                self._give_up = loop.call_later(REOPEN_GRACE, self._refuse, str(exc))
            self._target.when_free(self._retry)
            return False
        self._shared = self._target
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
            transport.resume_reading()
        return True

    def _retry(self) -> None:
        if not self._closing and self._shared is None and self._try_attach():
            self._open()

    def _refuse(self, reason: str) -> None:
        self._give_up = None
        self._target.cancel_when_free(self._retry)
        log.info("%s refused: %s", self._peer, reason)
        if self._transport is not None and not self._closing:
            # A line a human with telnet or nc can read, as ser2net does; who holds the port is not
            # for an unauthenticated client to know.
            busy = (
                f"\r\nmeshserial: port {self._target.name} is in use by another client; try again later\r\n"
            )
            self._transport.write(busy.encode())
        self._close()

    def queue_scrollback(self, data: bytes) -> None:
        """Device output from before this session, sent right after the RFC 2217 opening."""
        self._scrollback = data

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self._engine.receive_data(data)
        except ProtocolError as exc:
            _log_once.warning(self._peer, "malformed telnet stream, closing", str(exc))
            self._close()
            return
        shared = self._shared
        if shared is None:
            return
        for event in events:
            match event:
                case rfc2217.Data(data=payload):
                    if self._mode is Mode.READ_WRITE:
                        shared.write(self, payload)
                case rfc2217.Request(command=command, value=value):
                    self._engine.reply(command, shared.request(self, command, value))
                case rfc2217.FlowResume():
                    pending, self._suspended_output = self._suspended_output, []
                    self._suspended_size = 0
                    for chunk in pending:
                        self._engine.send_data(chunk)
                case rfc2217.BreakReceived():
                    if self._mode is Mode.READ_WRITE:
                        shared.port.set_control(break_=True)
                        shared.port.set_control(break_=False)
                case rfc2217.Notice(reason=reason):
                    _log_once.warning(self._peer, reason)
                case rfc2217.ComPortActive():
                    log.debug("%s: COM-PORT-OPTION agreed", self._peer)
                case _:
                    pass
        self._flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
            self._target.cancel_when_free(self._retry)
        if self._shared is not None:
            self._shared.detach(self)
        if exc is not None:
            log.info("%s: connection lost: %s", self._peer, exc)
        if self.on_close is not None:
            self.on_close(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._shared is not None:
            self._shared.session_pause_writing(self)

    def resume_writing(self) -> None:
        if self._shared is not None:
            self._shared.session_resume_writing(self)

    # ---- Session (called by SharedPort) ----------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self._closing:
            return
        if self._engine.output_suspended:
            # The client asked us to hold data (FLOWCONTROL-SUSPEND): keep it, and if it is the holder,
            # stop the device. A watcher's held output counts towards its limit (see backlog()).
            self._suspended_output.append(data)
            self._suspended_size += len(data)
            if self._shared is not None and self._suspended_size > PAUSE_HIGH_WATER:
                self._shared.session_pause_writing(self)
            return
        self._engine.send_data(data)
        self._flush()

    def device_event(self, event: PortEvent) -> None:
        if self._closing:
            return
        if isinstance(event, ModemStateChanged):
            self._engine.notify_modemstate(event.state)
        elif isinstance(event, PeerClosed):
            # Device gone: tell the client carrier and the other lines dropped.
            self._engine.notify_modemstate(ModemState(0))
            if self.on_device is not None:
                self.on_device(False)
        elif isinstance(event, PeerOpened) and self._shared is not None:
            state = self._shared.modem_state()
            self._engine.notify_modemstate(state if state is not None else _default_modem(self._shared))
            if self.on_device is not None:
                self.on_device(True)
        self._flush()

    def backlog(self) -> int:
        transport = self._transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        return queued + self._suspended_size

    def kick(self, reason: str) -> None:
        log.info("%s: ending session: %s", self._peer, reason)
        if self.end_with_reason is not None and not self._closing:
            self.end_with_reason(reason)  # ends the stream, which closes us through connection_lost
        self._close()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # ---- internals -------------------------------------------------------------------------------

    def _flush(self) -> None:
        out = self._engine.data_to_send()
        if out and self._transport is not None and not self._closing:
            self._transport.write(out)

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        transport = self._transport
        if transport is not None:
            transport.close()
            # A client that stopped reading would keep a cleanly closing connection (and its send
            # buffer) forever: cut it off if it is not gone soon.
            self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)


def _default_modem(shared: SharedPort) -> ModemState:
    """Lines to report for a port that cannot read them: a present, ready device."""
    return ModemState.CTS | ModemState.DSR | ModemState.CD if shared.state != "offline" else ModemState(0)
