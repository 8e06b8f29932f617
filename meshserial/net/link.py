"""Connect two ports back to back: bytes, settings, purges and (optionally) DTR/RTS following open.

``use --pty`` is a PortLink between the local :class:`~meshserial.ports.pty.PtyPort` (side A, the
application) and a :class:`~meshserial.net.rfc2217_client.RemotePort` (side B, the device far away).
Back-pressure is hop by hop: when B's outgoing buffer is full, A stops being read, and the other way
round; nothing is queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from meshserial.errors import PortError
from meshserial.ports.base import (
    ModemStateChanged,
    PeerClosed,
    PeerOpened,
    Port,
    PortEvent,
    PurgeRequested,
    SettingsChanged,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkOptions:
    #: Raise DTR and RTS on B when an application opens A, drop them when it closes (a real UART's HUPCL).
    dtr_follows_open: bool = False
    #: Forward A's settings changes (the application's tcsetattr) to B.
    forward_settings: bool = True
    #: Apply B's settings changes (what the remote really uses) to A.
    reflect_settings: bool = True


class _Side:
    """The listener for one port, forwarding to the other."""

    def __init__(self, link: PortLink, this: Port, other: Port, *, is_app: bool) -> None:
        self._link = link
        self._this = this
        self._other = other
        self._is_app = is_app

    def port_data(self, data: bytes) -> None:
        self._other.write(data)

    def port_event(self, event: PortEvent) -> None:
        self._link.event(self._this, self._other, event, is_app=self._is_app)

    def port_pause_writing(self) -> None:
        # ``this`` cannot take more data: stop reading the port that feeds it.
        self._other.pause_reading()

    def port_resume_writing(self) -> None:
        self._other.resume_reading()

    def port_closed(self, exc: BaseException | None) -> None:
        self._link.side_closed(self._this, exc)


class PortLink:
    """Runs until one side closes; :meth:`run` returns which side and why."""

    def __init__(self, app: Port, device: Port, options: LinkOptions = LinkOptions()) -> None:
        self.app = app
        self.device = device
        self.options = options
        self._done: asyncio.Future[tuple[Port, BaseException | None]] = (
            asyncio.get_running_loop().create_future()
        )

    async def start(self) -> None:
        await self.device.start(_Side(self, self.device, self.app, is_app=False))
        await self.app.start(_Side(self, self.app, self.device, is_app=True))

    async def wait(self) -> tuple[Port, BaseException | None]:
        """Wait until a side closes; return ``(port, exception or None)``."""
        return await asyncio.shield(self._done)

    def event(self, this: Port, other: Port, event: PortEvent, *, is_app: bool) -> None:
        opts = self.options
        try:
            match event:
                case SettingsChanged(settings=settings):
                    if is_app and opts.forward_settings:
                        log.info("%s: settings %s", this.name, settings.describe())
                        other.configure(settings)
                    elif not is_app and opts.reflect_settings:
                        other.configure(settings)
                case PurgeRequested(rx=rx, tx=tx):
                    # The application flushed its input (rx): data from the device not yet delivered;
                    # its output (tx): data towards the device. The device side uses the same words.
                    other.purge(rx=rx, tx=tx)
                case PeerOpened():
                    if is_app and opts.dtr_follows_open:
                        other.set_control(dtr=True, rts=True)
                    log.info("%s: opened", this.name)
                case PeerClosed(reason=reason):
                    if is_app and opts.dtr_follows_open:
                        other.set_control(dtr=False, rts=False)
                    log.info("%s: closed%s", this.name, f" ({reason})" if reason else "")
                case ModemStateChanged(state=state):
                    log.debug("%s: modem lines %r", this.name, state)
        except PortError as exc:
            log.warning("%s: %s", other.name, exc)

    def side_closed(self, port: Port, exc: BaseException | None) -> None:
        if not self._done.done():
            self._done.set_result((port, exc))

    async def aclose(self) -> None:
        await self.app.aclose()
        await self.device.aclose()
