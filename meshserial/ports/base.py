"""The one small interface every local port implements.

A port is shaped like an asyncio transport: the owner hands it a :class:`PortListener` in
:meth:`Port.start`, then receives bytes and events through callbacks, writes without awaiting, and uses
pause/resume for back-pressure in both directions. The bridge between a port and a network session is
therefore written once, for every kind of port.

Kinds of port and what they can carry:

* ``SerialDevice`` (``device.py``): a real UART via pyserial. Everything.
* ``PtyPort`` (``pty.py``): the client-side virtual serial port. It *reports* the application's
  settings (baud, stop bits, flow control) and purges as events; it cannot carry data bits, parity,
  modem lines or BREAK (the kernel hides them), and says so through :class:`Capabilities`.
* ``SimulatedDevice`` (``sim.py``): ``sim:echo`` and ``sim:nmea`` for demos and tests.
* ``MemoryPort`` (``memory.py``): an in-process port for tests of the layers above.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

from meshserial.proto.settings import ModemState, SerialSettings

# Default bound of a port's outgoing buffer before it asks its producer to pause.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """Which line features a port really carries."""

    baudrate: bool = True
    bytesize: bool = True
    parity: bool = True
    stopbits: bool = True
    flow: bool = True
    modem_lines: bool = True  # DTR/RTS out, CTS/DSR/RI/CD in
    break_: bool = True
    purge: bool = True


# --- events a port reports besides data ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsChanged:
    """The local side changed the line settings (a PTY application called tcsetattr)."""

    settings: SerialSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class ModemStateChanged:
    """The device's modem status lines changed; ``state`` carries the delta bits too."""

    state: ModemState


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeRequested:
    """The local side discarded buffered data (a PTY application called tcflush)."""

    rx: bool  # data travelling towards the application
    tx: bool  # data travelling from the application


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerOpened:
    """An application opened the virtual port (PTY), or a lost device came back."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    """The application closed the virtual port (PTY), or the device disappeared."""

    reason: str = ""


PortEvent = SettingsChanged | ModemStateChanged | PurgeRequested | PeerOpened | PeerClosed


class PortListener(Protocol):
    """What a port calls back. All calls happen on the event loop thread."""

    def port_data(self, data: bytes) -> None:
        """Bytes read from the port."""

    def port_event(self, event: PortEvent) -> None:
        """A non-data event, see :data:`PortEvent`."""

    def port_pause_writing(self) -> None:
        """The port's outgoing buffer went above its high-water mark: stop calling ``write``."""

    def port_resume_writing(self) -> None:
        """The outgoing buffer drained below the low-water mark."""

    def port_closed(self, exc: BaseException | None) -> None:
        """The port is gone for good (``aclose`` was called, or an unrecoverable error)."""


class Port(abc.ABC):
    """A local serial endpoint. Not thread-safe; use from the event loop only."""

    #: Human name for logs and errors (a device path, ``sim:echo``, a PTY path).
    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    async def start(self, listener: PortListener) -> None:
        """Open the underlying resource if needed and start delivering callbacks.

        Raises :class:`~meshserial.errors.PortError` (``PortNotFound``, ``PortBusy``) when the port cannot
        be opened at all.
        """

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Queue ``data`` for the port; never blocks. Data written while the peer side is absent
        (device unplugged, PTY not opened by any application) is discarded, as a real UART would."""

    @abc.abstractmethod
    def pause_reading(self) -> None:
        """Stop delivering ``port_data`` until :meth:`resume_reading`."""

    @abc.abstractmethod
    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""

    @abc.abstractmethod
    def write_buffer_size(self) -> int:
        """Bytes accepted by :meth:`write` but not yet handed to the OS."""

    @property
    @abc.abstractmethod
    def settings(self) -> SerialSettings:
        """The settings in use."""

    @abc.abstractmethod
    def configure(self, settings: SerialSettings) -> SerialSettings:
        """Apply ``settings``; return what is actually in use. Identical settings are a cheap no-op
        (pyserial clients re-send all settings often). Raises ``PortError`` if the device refuses."""

    @abc.abstractmethod
    def set_control(
        self, *, dtr: bool | None = None, rts: bool | None = None, break_: bool | None = None
    ) -> None:
        """Drive DTR, RTS and the BREAK condition; ``None`` leaves a line as it is. Ports without
        the capability ignore the call."""

    @property
    @abc.abstractmethod
    def control(self) -> tuple[bool, bool, bool]:
        """Current ``(dtr, rts, break)`` as last set."""

    @abc.abstractmethod
    def modem_state(self) -> ModemState | None:
        """The modem status lines (no delta bits), or ``None`` when the port cannot know them."""

    @abc.abstractmethod
    def purge(self, *, rx: bool, tx: bool) -> None:
        """Discard data not yet delivered: ``rx`` towards the reader, ``tx`` towards the device."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything; idempotent. ``port_closed(None)`` is called once."""

    @property
    def present(self) -> bool:
        """Whether the device is there now (a started device waiting for its path says no); changes
        later arrive as :class:`PeerClosed` / :class:`PeerOpened`."""
        return True


# --- bookkeeping the local ports share -------------------------------------------------------------


class RemembersControl:
    """:meth:`Port.set_control` and :attr:`Port.control` for a port that keeps its output lines itself.

    Mixed in before :class:`Port`. ``set_control`` merges the lines given into ``_control`` (``None``
    keeps a line as it is), then calls :meth:`_control_changed`, where a port drives its hardware. A
    port without modem lines or BREAK (a PTY) still remembers them, so the lines read back as set, as
    the ``Port`` contract asks.
    """

    _control: tuple[bool, bool, bool]  # (dtr, rts, break), set by the port's constructor

    def set_control(
        self, *, dtr: bool | None = None, rts: bool | None = None, break_: bool | None = None
    ) -> None:
        before = self._control
        self._control = (
            before[0] if dtr is None else dtr,
            before[1] if rts is None else rts,
            before[2] if break_ is None else break_,
        )
        self._control_changed(before, dtr=dtr, rts=rts, break_=break_)

    def _control_changed(
        self, before: tuple[bool, bool, bool], *, dtr: bool | None, rts: bool | None, break_: bool | None
    ) -> None:
        """Act on a :meth:`set_control` call: ``before`` is what the lines were, the arguments are
        as given (``None``: not asked for). Nothing by default."""

    @property
    def control(self) -> tuple[bool, bool, bool]:
        return self._control


class WriterFlow:
    """When a port's listener must stop and may resume writing, from the size of the port's queue.

    The port calls :meth:`update` whenever its queue of bytes towards the device grew or shrank. Above
    ``high`` the listener is told ``port_pause_writing``, and once the queue is back at or below
    ``low``, ``port_resume_writing``; each once per crossing. The gap between the two marks keeps a
    queue hovering around one mark from flapping. With no listener yet there is nobody to tell and
    nothing is remembered.
    """

    __slots__ = ("_high", "_low", "listener", "paused")

    def __init__(self, *, high: int = WRITE_HIGH_WATER, low: int = WRITE_LOW_WATER) -> None:
        self._high = high
        self._low = low
        self.listener: PortListener | None = None
        self.paused = False

    def update(self, size: int) -> None:
        """The queue now holds ``size`` bytes."""
        listener = self.listener
        if listener is None:
            return
        if not self.paused:
            if size > self._high:
                self.paused = True
                listener.port_pause_writing()
        elif size <= self._low:
            self.paused = False
            listener.port_resume_writing()
