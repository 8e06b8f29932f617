"""open_port, default_name and describe_device."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserial.errors import UsageError
from meshserial.ports import factory
from meshserial.ports.device import SerialDevice
from meshserial.ports.sim import SimulatedDevice
from meshserial.proto.settings import SerialSettings
from meshserial.proto.text import PORT_NAME_MAX, valid_port_name

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
        # Odd device names: the first character must be a letter or digit, the rest from the alphabet.
        ("/dev/.hidden", "hidden"),
        ("/dev/_tty-1", "tty-1"),
        ("/dev/tty USB 0", "tty-usb-0"),
        ("/dev/tty@1", "tty-1"),
        ("/dev/tty\x1b]0;x\x07", "tty-0-x"),
        ("/dev/ttyé", "tty"),
        ("/dev/ünï", "n"),
        ("/dev/---", "serial"),
        ("/", "serial"),
        ("", "serial"),
        ("sim:", "sim"),
        ("sim:Echo Two", "echo-two"),
        # Long names are cut to the limit, without ending on a separator.
        ("/dev/" + "a" * 100, "a" * PORT_NAME_MAX),
        ("/dev/" + "a" * 63 + "-b", "a" * 63),
        ("/dev/" + "x" * 30 + " " + "y" * 60, "x" * 30 + "-" + "y" * 33),
        # by-id names: the noise words go, long ones are cut to 40, the interface number stays.
        ("/dev/serial/by-id/usb-" + "Vendor_" * 20 + "X-if02-port0", ("vendor-" * 6)[:40].rstrip("-")),
        ("/dev/serial/by-id/usb-USB_Serial-if03-port0", "if3"),
        ("/dev/serial/by-id/usb-_-if00-port0", "usb-_-if00-port0"),
        ("/dev/serial/by-id/usb-Odd\nName-if00", "usb-odd-name-if00"),  # no by-id match across lines
        ("/dev/serial/by-id/usb-X-if" + "9" * 5000, "x-if" + "9" * 36),  # no int() of 5000 digits
    ],
    ids=lambda value: repr(value)[:40],
)
def test_default_name(spec: str, name: str) -> None:
    got = factory.default_name(spec)
    assert got == name
    assert valid_port_name(got)


_PATHS = st.one_of(
    st.text(),
    st.text().map(lambda t: "/dev/" + t),
    st.text().map(lambda t: "/dev/serial/by-id/usb-" + t),
    st.text().map(lambda t: "sim:" + t),
    st.from_regex(r"/dev/serial/by-id/(usb|pci|platform)-[\w.-]{0,120}(-if[0-9]{1,3})?(-port[0-9]{1,3})?"),
)


@given(_PATHS)
def test_default_name_is_always_a_valid_port_name(spec: str) -> None:
    assert valid_port_name(factory.default_name(spec))


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
