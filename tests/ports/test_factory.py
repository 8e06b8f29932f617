"""open_port, default_name and describe_device."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from meshserial.errors import UsageError
from meshserial.ports import factory
from meshserial.ports.device import SerialDevice
from meshserial.ports.sim import SimulatedDevice
from meshserial.proto.settings import SerialSettings

S = SerialSettings()


def test_open_port_kinds() -> None:
    echo = factory.open_port("sim:echo", S)
    assert isinstance(echo, SimulatedDevice) and echo.name == "sim:echo"
    assert isinstance(factory.open_port("sim:nmea", S), SimulatedDevice)
    dev = factory.open_port("/dev/ttyUSB0", S, wait=True)
    assert isinstance(dev, SerialDevice) and dev.name == "/dev/ttyUSB0"
    with pytest.raises(UsageError, match=r"sim:echo, sim:nmea"):
        factory.open_port("sim:gps", S)
    with pytest.raises(UsageError):
        factory.open_port("", S)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("/dev/ttyUSB0", "ttyUSB0"),
        ("/dev/ttyACM1", "ttyACM1"),
        ("sim:nmea", "nmea"),
        ("sim:echo", "echo"),
        ("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0", "ftdi-ft232r-a50285bi"),
        (
            "/dev/serial/by-id/usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0",
            "silicon-labs-cp2102-0001",
        ),
        ("/dev/serial/by-id/usb-FTDI_Dual_RS232-HS-if01-port0", "ftdi-dual-rs232-hs-if1"),
        ("/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0", "pci-0000-00-14-0-usb-0-1-1-0-port0"),
    ],
)
def test_default_name(spec: str, name: str) -> None:
    assert factory.default_name(spec) == name


def test_describe_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert factory.describe_device(tmp_path / "nothing") == {}
    link = tmp_path / "gps"
    link.symlink_to("/dev/ttyUSB7")
    fake = SimpleNamespace(
        device="/dev/ttyUSB7",
        vid=0x0403,
        pid=0x6001,
        serial_number="A50285BI",
        manufacturer="FTDI",
        product="FT232R USB UART",
        description="FT232R USB UART - FT232R USB UART",
    )
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports", lambda: [fake])
    assert factory.describe_device(link) == {
        "vid:pid": "0403:6001",
        "serial_number": "A50285BI",
        "manufacturer": "FTDI",
        "product": "FT232R USB UART",
        "description": "FT232R USB UART - FT232R USB UART",
    }
    fake.vid = fake.pid = None
    fake.description = "n/a"
    assert "vid:pid" not in factory.describe_device("/dev/ttyUSB7")
