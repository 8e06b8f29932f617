"""The client side of a session that survives network failures.

``ResilientClient`` owns the session: it connects, and when the connection dies (a reset, a dead path
noticed by the keepalive, a server restart) it reconnects by itself with jittered exponential backoff,
and resumes the same session from the acknowledged offsets (:mod:`meshserial.net.stream`). The local
application keeps its port throughout: it talks to a :class:`SessionPort`, which stays the same object
even when the server had to start a new session (it then re-applies the line settings and says how
many bytes may have been lost).

While the connection is down, what the application writes is held by the :class:`SessionPort` (up to
:data:`HOLD_LIMIT`; beyond it the application is paused, as a UART with flow control would pause it)
and sent once the session is back, resumed or new: those bytes never left this machine, so they are
never lost. Only bytes that were in flight when the connection died (sent, not acknowledged) can be
lost, and only when the server could not resume the session; the status line says how many.

A session the server ends on purpose (access revoked or expired, replaced, too slow) is final: the
reason arrives with the end and becomes the client's error, with no attempt to reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from meshserial.errors import AuthError, ConnectionLost, MeshserialError, ProtocolError, UsageError
from meshserial.net.rfc2217_client import RemotePort
from meshserial.net.secure import ClientConnection
from meshserial.net.stream import SessionStream
from meshserial.ports.base import Capabilities, Port, PortEvent, PortListener
from meshserial.proto import session as sess
from meshserial.proto.client_session import MAX_BACKOFF, Attempt, ClientSession, Restarted, Resumed, State
from meshserial.proto.settings import ModemState, SerialSettings

log = logging.getLogger(__name__)

StreamFor = Callable[[ClientConnection, sess.Accept], None]
Connector = Callable[[sess.Hello, StreamFor], Awaitable[tuple[ClientConnection, sess.Accept]]]

HOLD_LIMIT = 1024 * 1024  # application bytes kept while the connection is down
ACTIVE_TIMEOUT = 10.0


class SessionPort(Port):
    """What the local side sees: one remote port, whatever session currently carries it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capabilities = Capabilities()
        self._remote: RemotePort | None = None
        self._listener: PortListener | None = None
        self._wanted: SerialSettings | None = None
        self._lines: dict[str, bool] = {}
        self._reading_paused = False
        self._held: list[bytes] = []
        self._held_size = 0
        self._holding = False
        self._held_paused = False

    @property
    def remote(self) -> RemotePort:
        assert self._remote is not None
        return self._remote

    def use(self, remote: RemotePort, *, reapply: bool) -> None:
        """Switch to ``remote`` (a new session); re-send the settings and lines the application chose."""
        old, self._remote = self._remote, remote
        if old is not None and old is not remote:
            old.bind(_DISCARD)  # the replaced session's last callbacks (its end) go nowhere
        if not self._holding:
            # Every byte from the application passes here: hand it to the remote port directly.
            self.write = remote.write  # type: ignore[method-assign]
        if self._listener is not None:
            # Until the local side starts, the remote port keeps what arrives (early data).
            remote.bind(self._listener)
        if self._reading_paused:
            remote.pause_reading()
        if reapply:
            if self._wanted is not None:
                remote.configure(self._wanted)
            if self._lines:
                remote.set_control(dtr=self._lines.get("dtr"), rts=self._lines.get("rts"))

    def hold(self) -> None:
        """The connection is down: keep what the application writes (see the module docstring)."""
        self._holding = True
        self.write = self._hold  # type: ignore[method-assign]

    def _hold(self, data: bytes) -> None:
        self._held.append(bytes(data))
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT and not self._held_paused and self._listener is not None:
            self._held_paused = True
            self._listener.port_pause_writing()

    def release(self) -> int:
        """The session is carried again: send what was held; returns how many bytes that was."""
        held, size = self._held, self._held_size
        self._held, self._held_size, self._holding = [], 0, False
        if self._remote is not None:
            self.write = self._remote.write  # type: ignore[method-assign]
            for chunk in held:
                self._remote.write(chunk)
        if self._held_paused:
            self._held_paused = False
            if self._listener is not None:
                self._listener.port_resume_writing()
        return size

    # ---- Port ------------------------------------------------------------------------------------

    async def start(self, listener: PortListener) -> None:
        self._listener = listener
        if self._remote is not None:
            self.use(self._remote, reapply=False)

    def write(self, data: bytes) -> None:
        self.remote.write(data)  # replaced by the remote port's own write once one is in use

    def pause_reading(self) -> None:
        self._reading_paused = True
        self.remote.pause_reading()

    def resume_reading(self) -> None:
        self._reading_paused = False
        self.remote.resume_reading()

    def write_buffer_size(self) -> int:
        return self.remote.write_buffer_size()

    @property
    def settings(self) -> SerialSettings:
        return self.remote.settings

    def configure(self, settings: SerialSettings) -> SerialSettings:
        self._wanted = settings
        return self.remote.configure(settings)

    def set_control(
        self, *, dtr: bool | None = None, rts: bool | None = None, break_: bool | None = None
    ) -> None:
        if dtr is not None:
            self._lines["dtr"] = dtr
        if rts is not None:
            self._lines["rts"] = rts
        self.remote.set_control(dtr=dtr, rts=rts, break_=break_)

    @property
    def control(self) -> tuple[bool, bool, bool]:
        return self.remote.control

    def modem_state(self) -> ModemState | None:
        return self.remote.modem_state()

    def purge(self, *, rx: bool, tx: bool) -> None:
        self.remote.purge(rx=rx, tx=tx)

    async def aclose(self) -> None:
        if self._remote is not None:
            await self._remote.aclose()


class _Discard:
    """The listener of a remote port whose session has been replaced."""

    def port_data(self, data: bytes) -> None:
        pass

    def port_event(self, event: PortEvent) -> None:
        pass

    def port_pause_writing(self) -> None:
        pass

    def port_resume_writing(self) -> None:
        pass

    def port_closed(self, exc: BaseException | None) -> None:
        pass


_DISCARD = _Discard()


class ResilientClient:
    """Connects, keeps the session alive across failures, and reports what happens on ``status``.

    The decisions (what to ask for, resume or new session, when to try again, when to give up) are
    the sans-IO :class:`~meshserial.proto.client_session.ClientSession`'s; this class connects when
    it says so, and wires the session's stream to the local port.
    """

    def __init__(
        self,
        *,
        name: str,
        hello: sess.Hello,
        connector: Connector,
        status: Callable[[str], None],
        reconnect: bool = True,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.port = SessionPort(name)
        self._name = name
        self._connector = connector
        self._status = status
        self._reconnect = reconnect
        self._session = ClientSession(
            hello, jitter=lambda: random.uniform(0.75, 1.25), max_backoff=max_backoff
        )
        self._stream: SessionStream | None = None
        self._conn: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._report: str | None = None
        self._device_present = True

    async def open(self) -> None:
        """First connection; errors go to the caller (nothing to resume yet)."""
        self._session.attempt_started()
        self._conn, _ = await self._connector(self._session.hello(), self._stream_for)
        await self._wait_active()

    async def _wait_active(self) -> None:
        remote = self.port.remote
        try:
            async with asyncio.timeout(ACTIVE_TIMEOUT):
                await remote.active
        except TimeoutError:
            raise ProtocolError(f"{self._name}: no RFC 2217 session inside the channel") from None

    def _device(self, present: bool) -> None:
        if present != self._device_present:
            self._device_present = present
            self._status("device back on the server" if present else "device unplugged on the server")

    def _stream_for(self, conn: ClientConnection, accept: sess.Accept) -> None:
        """Called inside the connection's handling of ``accept``: carry (or replace) the stream."""
        conn.on_device = self._device
        self._device(accept.device)
        old = self._stream
        match self._session.accepted(accept):
            case Resumed(lost=lost) if old is not None:
                lost += old.attach(conn, accept.rx)
                self._report = "resumed after {elapsed:.1f} s" + (
                    f"; {lost} bytes could not be recovered" if lost else ""
                )
                return
            case Restarted(in_flight=in_flight, first=first):
                state = self._session.stream
                assert state is not None
                remote = RemotePort(name=self._name)
                new = SessionStream(remote, state=state, on_detached=self._detached)
                self._stream = new
                # Switch the local side to the new session first, so the old one's end goes nowhere.
                self.port.use(remote, reapply=not first)
                if old is not None:
                    # The server no longer knows our session (it restarted, or we were away too long).
                    old.ended_by_peer(None)
                    doubt = f"{in_flight} bytes in flight when it died may be lost, " if in_flight else ""
                    self._report = (
                        "new session after {elapsed:.1f} s; the old one was gone (server restarted?): "
                        f"{doubt}{{held}} bytes written meanwhile were sent; device output during the "
                        "outage is lost"
                    )
                new.attach(conn, 0)
            case _:  # pragma: no cover - a resume needs a stream to resume
                raise ProtocolError("the server resumed a session we do not have")

    def _detached(self, stream: SessionStream, exc: BaseException | None) -> None:
        if stream is not self._stream or self._closing:
            return
        if not self._reconnect:
            self._session.end()
            stream.ended_by_peer(ConnectionLost(f"connection to {self._name} lost: {exc}"))
            return
        self.port.hold()
        self._session.connection_lost(self._loop.time())
        self._status(f"connection lost ({exc}); reconnecting…")
        self._wake.set()

    async def run(self) -> None:
        """Reconnect whenever the session says so, until :meth:`aclose` or the session ends."""
        while not self._closing and self._session.state is not State.ENDED:
            at = self._session.next_timer()
            self._wake.clear()
            try:
                async with asyncio.timeout_at(at):
                    await self._wake.wait()
                continue  # something changed: look at the timer again
            except TimeoutError:
                pass
            if isinstance(self._session.handle_timer(self._loop.time()), Attempt):
                await self._attempt()

    async def _attempt(self) -> None:
        session = self._session
        session.attempt_started()
        try:
            async with asyncio.timeout(session.attempt_timeout):
                self._conn, _ = await self._connector(session.hello(), self._stream_for)
            await self._wait_active()
        except TimeoutError:
            log.info("reconnect attempt %d timed out", session.attempts)
            session.failed(self._loop.time(), final=False)
            return
        except (AuthError, UsageError) as exc:
            # Not a network problem: trying again would not help (revoked, port taken, key changed).
            # The error ends the session and reaches the user as the reason.
            session.failed(self._loop.time(), final=True)
            if self._stream is not None:
                self._stream.ended_by_peer(exc)
            return
        except MeshserialError as exc:
            log.info("reconnect attempt %d failed: %s", session.attempts, exc)
            session.failed(self._loop.time(), final=False)
            return
        held = self.port.release()
        elapsed = self._loop.time() - (session.lost_at or self._loop.time())
        report = self._report or "reconnected after {elapsed:.1f} s"
        self._status(report.format(elapsed=elapsed, held=held))
        self._report = None

    async def aclose(self) -> None:
        self._closing = True
        self._session.end()
        self._wake.set()
        if self._stream is not None:
            self._stream.end()
        await self.port.aclose()
