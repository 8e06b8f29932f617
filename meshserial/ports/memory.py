"""An in-process port for testing the layers above: it records what it is told and lets the test
inject data and events."""

from __future__ import annotations

from meshserial.errors import PortClosed, PortError
from meshserial.ports.base import Capabilities, Port, PortEvent, PortListener, RemembersControl, WriterFlow
from meshserial.proto.settings import ModemState, SerialSettings


class MemoryPort(RemembersControl, Port):
    """Records writes, settings, control lines and purges; :meth:`feed` and :meth:`emit` drive the owner.

    Data fed while reading is paused is held back and delivered on :meth:`resume_reading`, so tests can
    check that the owner's back-pressure really stops the flow.
    """

    def __init__(
        self,
        name: str = "memory",
        settings: SerialSettings = SerialSettings(),  # noqa: B008 - frozen dataclass
        *,
        capabilities: Capabilities = Capabilities(),  # noqa: B008 - frozen dataclass
        modem: ModemState | None = None,
    ) -> None:
        self.name = name
        self.capabilities = capabilities
        self.modem = modem
        self.written = bytearray()
        self.configured: list[SerialSettings] = []
        self.controls: list[tuple[bool | None, bool | None, bool | None]] = []
        self.purges: list[tuple[bool, bool]] = []
        self.reading_paused = False
        self.started = False
        self.closed = False
        self.listener: PortListener | None = None
        self._settings = settings
        self._control = (True, True, False)
        self._held = bytearray()
        self._buffered = 0
        # Any byte waiting pauses the owner and an empty port resumes it: the tests choose the crossing.
        self._flow = WriterFlow(high=0, low=0)

    async def start(self, listener: PortListener) -> None:
        if self.started:
            raise PortError(f"{self.name}: already started")
        self.started = True
        self.listener = self._flow.listener = listener

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.listener is not None:
            self.listener.port_closed(None)

    def _check(self) -> None:
        if self.closed:
            raise PortClosed(f"{self.name} is closed")

    # --- test side -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes "from the device" towards the listener (held while reading is paused)."""
        self._check()
        if self.reading_paused:
            self._held += data
        elif self.listener is not None and data:
            self.listener.port_data(data)

    def emit(self, event: PortEvent) -> None:
        """Report ``event`` to the listener."""
        if self.listener is not None:
            self.listener.port_event(event)

    def set_buffered(self, size: int) -> None:
        """Pretend ``size`` bytes are waiting in the port, crossing the owner's pause/resume lines."""
        self._buffered = size
        self._flow.update(size)

    def fail(self, exc: BaseException | None = None) -> None:
        """The port breaks for good (``port_closed(exc)``)."""
        self.closed = True
        if self.listener is not None:
            self.listener.port_closed(exc)

    # --- Port interface ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._check()
        self.written += data

    def write_buffer_size(self) -> int:
        return self._buffered

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self._held and self.listener is not None:
            held, self._held = bytes(self._held), bytearray()
            self.listener.port_data(held)

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    def configure(self, settings: SerialSettings) -> SerialSettings:
        self._check()
        if settings != self._settings:
            self.configured.append(settings)
            self._settings = settings
        return self._settings

    def _control_changed(
        self, before: tuple[bool, bool, bool], *, dtr: bool | None, rts: bool | None, break_: bool | None
    ) -> None:
        self.controls.append((dtr, rts, break_))

    def modem_state(self) -> ModemState | None:
        return self.modem

    def purge(self, *, rx: bool, tx: bool) -> None:
        self._check()
        self.purges.append((rx, tx))
        if rx:
            self._held.clear()
