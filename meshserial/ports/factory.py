"""Turn a DEVICE argument (``sim:echo``, ``sim:nmea`` or a path) into a :class:`Port`."""

from __future__ import annotations

import logging
import os
import re

from meshserial.errors import UsageError
from meshserial.ports.base import Port
from meshserial.ports.device import SerialDevice
from meshserial.ports.sim import SIM_KINDS, SimulatedDevice
from meshserial.proto.settings import SerialSettings
from meshserial.proto.text import PORT_NAME_MAX

log = logging.getLogger(__name__)

SIM_PREFIX = "sim:"
# Words in udev by-id names that say nothing about which device it is.
_NOISE = frozenset({"usb", "to", "uart", "bridge", "controller", "serial", "converter", "adapter", "port"})
_MAX_NAME = 40


def open_port(spec: str, settings: SerialSettings, *, wait: bool = False) -> Port:
    """A not yet started port for ``spec``; ``wait`` lets a device path appear later."""
    if spec.startswith(SIM_PREFIX):
        kind = spec[len(SIM_PREFIX) :]
        if kind not in SIM_KINDS:
            valid = ", ".join(SIM_PREFIX + k for k in SIM_KINDS)
            raise UsageError(f"unknown simulated device {spec!r} (valid: {valid})")
        return SimulatedDevice(kind, settings)
    if not spec:
        raise UsageError("no serial device given")
    return SerialDevice(spec, settings, wait=wait)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_name(spec: str) -> str:
    """A short readable name for a shared port: ``/dev/ttyUSB0`` -> ``ttyUSB0``, ``sim:nmea`` -> ``nmea``,
    ``/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0`` -> ``ftdi-ft232r-a50285bi``.

    Always a valid port name (:func:`meshserial.proto.text.valid_port_name`), whatever ``spec`` is.
    """
    return _usable(_readable_name(spec))


def _usable(name: str) -> str:
    # The candidates below use only A-Z a-z 0-9 . _ -; what is left is the rule's first character
    # (a letter or digit) and its length.
    name = name.lstrip("._-")
    if len(name) > PORT_NAME_MAX:
        name = name[:PORT_NAME_MAX].rstrip("._-")
    return name or "serial"


def _readable_name(spec: str) -> str:
    if spec.startswith(SIM_PREFIX):
        return _slug(spec[len(SIM_PREFIX) :]) or "sim"
    base = os.path.basename(spec.rstrip("/"))
    if "/by-id/" in spec:
        # ASCII digits, and few of them: int() refuses numbers of thousands of digits.
        match = re.fullmatch(r"(?:usb|pci|platform)-(.*?)(?:-if([0-9]{1,9}))?(?:-port([0-9]{1,9}))?", base)
        if match:
            core, iface, port = match.groups()
            words = [w for w in re.split(r"[_\W]+", core) if w and w.lower() not in _NOISE]
            name = _slug("-".join(words))
            if iface and int(iface) != 0:
                name += f"-if{int(iface)}"
            if port and int(port) != 0:
                name += f"-p{int(port)}"
            if len(name) > _MAX_NAME:
                name = name[:_MAX_NAME].rstrip("-")
            if name:
                return name
    # Device names like ttyUSB0 keep their case; anything odd is reduced to a safe slug.
    if re.fullmatch(r"[A-Za-z0-9._-]+", base):
        return base
    return _slug(base) or "serial"


def describe_device(path: str | os.PathLike[str]) -> dict[str, str]:
    """USB identity of a device from ``serial.tools.list_ports`` (``{}`` when unknown)."""
    try:
        from serial.tools import list_ports  # noqa: PLC0415 - sysfs scan only when asked

        real = os.path.realpath(path)
        for info in list_ports.comports():
            if os.path.realpath(info.device) != real:
                continue
            out: dict[str, str] = {}
            if info.vid is not None and info.pid is not None:
                out["vid:pid"] = f"{info.vid:04x}:{info.pid:04x}"
            for key in ("serial_number", "manufacturer", "product", "description"):
                value = getattr(info, key, None)
                if value and value != "n/a":
                    out[key] = str(value)
            return out
    except (ImportError, OSError, ValueError) as exc:
        log.debug("cannot describe %s: %s", path, exc)
    return {}
