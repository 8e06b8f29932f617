"""Built-in simulated devices for demos and tests: ``sim:echo`` and ``sim:nmea``.

* ``sim:echo`` is a loopback plug on a UART (DB9: TX to RX, RTS to CTS, DTR to DSR and DCD, RI left
  open), so the loopback self-tests that serial tools ship can run against it:

  - Data comes back as it was sent. The buffer is bounded: while the reader is paused the bytes wait
    there, and above the high-water mark the writer is asked to pause, like a slow device would.
  - CTS follows RTS; DSR and CD follow DTR; RI is never on. ``modem_state()`` answers from the control
    lines at once, and every change is also reported to the listener as a :class:`ModemStateChanged`
    with the RFC 2217 delta bits, one loop iteration later, as a UART's modem-status interrupt arrives
    after the write that caused it. The delta bits latch until reported (a 16550's MSR works the same
    way), so a pulse shorter than one iteration is still seen as a change.
  - The lines start as a freshly opened real port has them: Linux raises DTR and RTS on open and
    pyserial asserts both by default, so CTS, DSR and CD start on.
  - BREAK: the plug wires the break condition back to RX. A Linux UART read the way pyserial sets it
    up (``IGNBRK`` and ``PARMRK`` cleared, ``BRKINT`` off as the driver leaves it) hands the reader one
    NUL byte per break, so that is what the echo returns when BREAK goes on. While BREAK is on the
    transmitter is held at space, so bytes written meanwhile never reach the wire and are dropped.

* ``sim:nmea`` is a GPS receiver: once per second (a loop timer) it queues a GGA and an RMC sentence with
  correct checksums, and a pacing timer releases at most ``baud / 10`` bytes per second (8N1 framing), so
  a low baud rate really throttles it, as on a UART. Sentences that do not fit the queue are dropped. Its
  outputs are not wired to anything: CTS, DSR and CD stay asserted whatever DTR and RTS do.

Both accept every setting (they have no hardware to refuse it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Callable

from meshserial.errors import PortClosed, UsageError
from meshserial.ports.base import (
    Capabilities,
    ModemStateChanged,
    Port,
    PortListener,
    RemembersControl,
    WriterFlow,
)
from meshserial.proto.settings import ModemState, SerialSettings, modem_delta

log = logging.getLogger(__name__)

SIM_KINDS = ("echo", "nmea")
NMEA_INTERVAL = 1.0
PACE_TICK = 0.05
NMEA_QUEUE_LIMIT = 4096
ECHO_CHUNK = 4096
# What a break looks like to a reader of a Linux UART in raw mode (see the module docstring).
BREAK_BYTE = b"\x00"
# What sim:nmea reports whatever its control lines do.
NMEA_LINES = ModemState.CTS | ModemState.DSR | ModemState.CD


def loopback_lines(*, dtr: bool, rts: bool) -> ModemState:
    """The modem status lines a loopback plug shows for the given control lines."""
    state = ModemState(0)
    if rts:
        state |= ModemState.CTS
    if dtr:
        state |= ModemState.DSR | ModemState.CD
    return state


def nmea_checksum(body: str) -> str:
    """XOR of the characters between ``$`` and ``*``, as two hex digits."""
    value = 0
    for char in body.encode("ascii"):
        value ^= char
    return f"{value:02X}"


def nmea_sentence(body: str) -> bytes:
    return f"${body}*{nmea_checksum(body)}\r\n".encode("ascii")


def _coord(value: float, width: int, pos: str, neg: str) -> tuple[str, str]:
    hemi = pos if value >= 0 else neg
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    return f"{degrees:0{width}d}{minutes:07.4f}", hemi


def nmea_fix(now: dt.datetime, step: int) -> bytes:
    """One GGA + RMC pair for a receiver walking slowly around a point near Zürich."""
    lat = 47.3769 + 0.0005 * math.sin(step / 60)
    lon = 8.5417 + 0.0005 * math.cos(step / 60)
    lat_s, ns = _coord(lat, 2, "N", "S")
    lon_s, ew = _coord(lon, 3, "E", "W")
    hms = now.strftime("%H%M%S") + f".{now.microsecond // 10000:02d}"
    gga = f"GPGGA,{hms},{lat_s},{ns},{lon_s},{ew},1,08,0.9,408.0,M,47.4,M,,"
    rmc = (
        f"GPRMC,{hms},A,{lat_s},{ns},{lon_s},{ew},0.5,{(step * 6) % 360:.1f},{now.strftime('%d%m%y')},2.7,E,A"
    )
    return nmea_sentence(gga) + nmea_sentence(rmc)


class SimulatedDevice(RemembersControl, Port):
    """A device that lives in this process (``sim:echo`` or ``sim:nmea``)."""

    def __init__(self, kind: str, settings: SerialSettings = SerialSettings()) -> None:  # noqa: B008
        if kind not in SIM_KINDS:
            valid = ", ".join(f"sim:{k}" for k in SIM_KINDS)
            raise UsageError(f"unknown simulated device sim:{kind} (valid: {valid})")
        self.kind = kind
        self.name = f"sim:{kind}"
        self.capabilities = Capabilities()
        self._settings = settings
        self._control = (True, True, False)  # (dtr, rts, break) as a fresh open leaves them
        self._deltas = ModemState(0)  # modem-line changes not yet reported to the listener
        self._report: asyncio.Handle | None = None
        self._listener: PortListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._reading_paused = False
        self._flow = WriterFlow()  # pauses the writer while too much written is not yet echoed
        self._pending = bytearray()  # echo: bytes to return; nmea: sentences not yet "on the wire"
        self._deliver: asyncio.Handle | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._budget = 0.0
        self._last_tick = 0.0
        self._step = 0
        self._dropped = 0

    async def start(self, listener: PortListener) -> None:
        if self._loop is not None:
            raise UsageError(f"{self.name}: already started")
        self._loop = asyncio.get_running_loop()
        self._listener = self._flow.listener = listener
        if self.kind == "nmea":
            self._emit_fix()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for pending in (self._deliver, self._report):
            if pending is not None:
                pending.cancel()
        self._deliver = self._report = None
        self._pending.clear()
        if self._listener is not None:
            self._listener.port_closed(None)

    def _check(self) -> None:
        if self._closed:
            raise PortClosed(f"{self.name} is closed")

    # --- data ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._check()
        if self.kind != "echo" or not data:
            return  # a GPS ignores what it is sent
        if self._control[2]:
            return  # the transmitter is held at space during a break: these bytes never make it out
        self._pending += data
        self._flow.update(len(self._pending))
        self._schedule_echo()

    def write_buffer_size(self) -> int:
        return len(self._pending) if self.kind == "echo" else 0

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False
        if self.kind == "echo":
            self._schedule_echo()

    def _schedule_echo(self) -> None:
        if self._deliver is None and self._pending and not self._reading_paused and self._loop:
            self._deliver = self._loop.call_soon(self._echo)

    def _echo(self) -> None:
        self._deliver = None
        if self._closed or self._reading_paused or not self._pending:
            return
        chunk = bytes(self._pending[:ECHO_CHUNK])
        del self._pending[:ECHO_CHUNK]
        self._flow.update(len(self._pending))
        if self._listener is not None:
            self._listener.port_data(chunk)
        self._schedule_echo()

    # --- nmea ----------------------------------------------------------------------------------

    def _timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = self._loop.call_later(delay, callback)

    def _emit_fix(self) -> None:
        fix = nmea_fix(dt.datetime.now(dt.UTC), self._step)
        self._step += 1
        if len(self._pending) + len(fix) <= NMEA_QUEUE_LIMIT:
            self._pending += fix
        else:
            self._dropped += 1
            if self._dropped == 1:
                log.info(
                    "%s: %d baud is too slow for one fix per second; dropping fixes",
                    self.name,
                    self._settings.baudrate,
                )
        self._timer("fix", NMEA_INTERVAL, self._emit_fix)
        if "pace" not in self._timers and self._loop is not None:
            self._last_tick = self._loop.time()
            self._timer("pace", 0, self._pace)

    def _pace(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        rate = self._settings.baudrate / 10  # 10 bit times per byte at 8N1
        # Never bank more than one tick of budget: a paused reader must not get a burst afterwards.
        self._budget = min(self._budget + rate * (now - self._last_tick), max(rate * PACE_TICK, 1.0))
        self._last_tick = now
        if not self._reading_paused and self._pending and self._budget >= 1:
            n = min(int(self._budget), len(self._pending))
            chunk = bytes(self._pending[:n])
            del self._pending[:n]
            self._budget -= n
            if self._listener is not None:
                self._listener.port_data(chunk)
        if self._pending:
            self._timer("pace", PACE_TICK, self._pace)
        else:
            self._timers.pop("pace", None)  # nothing to send: sleep until the next fix

    # --- settings and lines --------------------------------------------------------------------

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    def configure(self, settings: SerialSettings) -> SerialSettings:
        self._check()
        self._settings = settings  # the new rate takes effect at the next pacing tick
        return settings

    def _control_changed(
        self, before: tuple[bool, bool, bool], *, dtr: bool | None, rts: bool | None, break_: bool | None
    ) -> None:
        # Before start nobody listens (the listener reads the starting lines from modem_state()); after
        # close nothing is reported any more, and like a real port a closed one does not complain.
        if self.kind != "echo" or self._loop is None or self._closed:
            return
        if self._control[2] and not before[2]:
            self._pending += BREAK_BYTE
            self._schedule_echo()
        delta = modem_delta(self._lines(before), self._lines())
        if delta is None:
            return
        self._deltas |= delta & ~ModemState.lines()
        if self._report is None:
            self._report = self._loop.call_soon(self._report_modem)

    def _report_modem(self) -> None:
        # Scheduled only once started (so there is a listener) and cancelled by aclose().
        self._report = None
        assert self._listener is not None
        state, self._deltas = self._lines() | self._deltas, ModemState(0)
        self._listener.port_event(ModemStateChanged(state=state))

    def _lines(self, control: tuple[bool, bool, bool] | None = None) -> ModemState:
        """The modem status lines for ``control`` (the output lines; by default as they are now)."""
        if self.kind != "echo":
            return NMEA_LINES
        dtr, rts, _ = self._control if control is None else control
        return loopback_lines(dtr=dtr, rts=rts)

    def modem_state(self) -> ModemState | None:
        return self._lines()

    def purge(self, *, rx: bool, tx: bool) -> None:
        self._check()
        # The echo's buffer is both "to the device" and "from the device"; either purge empties it.
        if rx or (tx and self.kind == "echo"):
            self._pending.clear()
            self._flow.update(0)
