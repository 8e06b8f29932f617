"""``doctor``'s verdict and the serial devices it looks at, on a made-up /dev and /sys/class/tty."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshserial.cli.doctor import Check, key_checks, serial_checks, serial_devices, summarize
from meshserial.keys import Identity


@pytest.mark.parametrize(
    ("statuses", "line", "code"),
    [
        ([], "all good", 0),
        (["ok", "info"], "all good", 0),
        (["ok", "warning"], "1 warning found", 1),
        (["warning", "warning", "info"], "2 warnings found", 1),
        (["problem"], "1 problem found", 1),
        (["warning", "problem", "problem"], "1 warning, 2 problems found", 1),
    ],
)
def test_a_warning_is_not_all_good(statuses: list[str], line: str, code: int) -> None:
    checks = [Check(area="a", status=s, detail="d") for s in statuses]  # type: ignore[arg-type]
    assert summarize(checks) == (line, code)


def _fake_system(tmp_path: Path) -> tuple[Path, Path]:
    dev, sys_tty = tmp_path / "dev", tmp_path / "sys"
    (dev / "serial" / "by-id").mkdir(parents=True)
    for n in range(32):
        (dev / f"ttyS{n}").touch()
        (sys_tty / f"ttyS{n}").mkdir(parents=True)
        # The kernel's uart type: 4 is a 16550A; 0 ("unknown") a placeholder with no UART behind it.
        (sys_tty / f"ttyS{n}" / "type").write_text("4\n" if n == 4 else "0\n")
    for name in ("ttyUSB0", "ttyACM0", "ttyAMA0", "ttyprintk", "tty1"):
        (dev / name).touch()
    (dev / "serial0").symlink_to("ttyS1")  # a Raspberry Pi's mini UART, a placeholder to the type test
    (dev / "serial1").symlink_to("ttyAMA0")
    (dev / "serial" / "by-id" / "usb-FTDI_FT232R_A1-if00-port0").symlink_to("../../ttyUSB0")
    (dev / "serial" / "by-id" / "usb-gone-if00").symlink_to("../../ttyUSB9")  # unplugged
    return dev, sys_tty


def test_serial_devices(tmp_path: Path) -> None:
    dev, sys_tty = _fake_system(tmp_path)
    devices, placeholders = serial_devices(dev, sys_tty)
    real = os.path.realpath(dev)
    assert devices == {
        f"{real}/ttyACM0": [],
        f"{real}/ttyAMA0": [str(dev / "serial1")],
        f"{real}/ttyS1": [str(dev / "serial0")],
        f"{real}/ttyS4": [],
        f"{real}/ttyUSB0": [str(dev / "serial/by-id/usb-FTDI_FT232R_A1-if00-port0")],
    }
    assert placeholders == 30


def test_serial_checks_list_devices_with_aliases_and_sum_up_placeholders(tmp_path: Path) -> None:
    dev, sys_tty = _fake_system(tmp_path)
    details = [c.detail for c in serial_checks(dev, sys_tty)]
    assert any(d.startswith(f"{os.path.realpath(dev)}/ttyS1 ({dev}/serial0) can") for d in details), details
    assert any("/ttyS4 can" in d for d in details) and not any("/ttyS5" in d for d in details)
    assert (
        "30 /dev/ttyS* with no UART behind them (placeholders the kernel always makes): not listed" in details
    )


def test_no_serial_devices(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "ttyS0").touch()  # no sysfs entry at all: nothing registered a port there
    checks = serial_checks(tmp_path / "dev", tmp_path / "sys")
    assert [c.status for c in checks if "no serial devices" in c.detail] == ["info"]
    assert any(c.detail.startswith("1 /dev/ttyS* with no UART") for c in checks)


def test_an_ignored_line_of_authorized_clients_is_a_warning(tmp_path: Path) -> None:
    home = Path(os.environ["MESHSERIAL_HOME"])
    home.mkdir(mode=0o700)
    good = Identity(bytes([1]) * 32).id_string
    (home / "authorized_clients").write_text(f"{good} *=rw\n{good[:-1]}q *=rw expire=2027-01-01\n")
    warnings = [c for c in key_checks() if c.status == "warning"]
    assert len(warnings) == 1 and warnings[0].area == "trust"
    assert "authorized_clients:2" in warnings[0].detail and warnings[0].detail.endswith("; line ignored")
