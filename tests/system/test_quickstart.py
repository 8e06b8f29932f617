"""The README's quick start, step by step, as a new user types it: a box and two desktops on a LAN.

share → id → authorize → list → use --pty → use --listen with pyserial → invite / accept → revoke.
Each machine is a network namespace with its own MESHSERIAL_HOME; the device is a PTY.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ROOT, DevicePty, Proc, private_home, read_exact, wait_for, write_all
from tests.netns import Netns, netns_unavailable

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.interop]

BOX = "198.18.7.1"


@dataclass
class Lan:
    net: Netns
    box: str
    desk: str
    laptop: str

    def start(self, ns: str, *args: str, env: dict[str, str]) -> Proc:
        return Proc(["ip", "netns", "exec", ns, sys.executable, "-m", "meshserial", *args], env=env)

    def run(self, ns: str, *args: str, env: dict[str, str], stdin: str | None = None) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "meshserial", *args],
            env=env, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"meshserial {' '.join(args)}: {result.stderr}"
        return result.stdout


@pytest.fixture
def lan() -> Iterator[Lan]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Netns() as net:
        switch = net.bridge("qs")
        box, desk, laptop = net.host("box"), net.host("desk"), net.host("laptop")
        net.attach(box, switch, ifname="eth0", address=f"{BOX}/24")
        net.attach(desk, switch, ifname="eth0", address="198.18.7.2/24")
        net.attach(laptop, switch, ifname="eth0", address="198.18.7.3/24")
        yield Lan(net, box, desk, laptop)


def _app(link: Path) -> int:
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd


def test_the_readme_quick_start(lan: Lan, tmp_path: Path, device: DevicePty) -> None:
    box, desk, laptop = (
        private_home(tmp_path, "box"),
        private_home(tmp_path, "desk"),
        private_home(tmp_path, "laptop"),
    )
    # On the box with the device.
    share = lan.start(lan.box, "share", f"{device.path}=gps", env=box)
    processes: list[Proc] = [share]
    try:
        share.wait_line(r"advertising gps on eth0 \(mDNS\)")
        # Once, let the box know the desktop's key (`meshserial id` on a fresh desktop makes it).
        desk_id = lan.run(lan.desk, "id", env=desk).strip()
        assert desk_id.startswith("ms1")
        lan.run(lan.box, "authorize", desk_id, "--name", "desktop", env=box)
        # On the desktop.
        table = lan.run(lan.desk, "list", env=desk).splitlines()
        assert table[0].split()[:3] == ["NAME", "HOST", "VIA"]
        row = next(line.split() for line in table[1:] if line.startswith("gps "))
        assert f"{BOX}:7217" in row and "free" in row and "new" in row, table
        link = tmp_path / "ttyGPS"
        use = lan.start(lan.desk, "use", "gps", "--pty", "--trust-new", "--link", str(link), env=desk)
        processes.append(use)
        use.wait_line(r"/dev/pts/\d+")
        fd = _app(link)
        try:
            write_all(fd, b"$GPGGA?\r\n")
            assert read_exact(device.master, 9) == b"$GPGGA?\r\n"
            write_all(device.master, b"$GPGGA,fix\r\n")
            assert read_exact(fd, 12) == b"$GPGGA,fix\r\n"
        finally:
            os.close(fd)
        assert use.stop() == 0, use.stderr
        gateway = lan.start(lan.desk, "use", "gps", "--listen", "127.0.0.1:7300", env=desk)
        processes.append(gateway)
        gateway.wait_line(r"rfc2217://127\.0\.0\.1:7300")
        check = (
            "import serial, sys\n"
            "s = serial.serial_for_url('rfc2217://127.0.0.1:7300', baudrate=4800, timeout=5)\n"
            "s.write(b'ping'); sys.stdout.write(s.read(4).decode()); s.close()"
        )
        pyserial = subprocess.Popen(
            ["ip", "netns", "exec", lan.desk, sys.executable, "-c", check],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert read_exact(device.master, 4) == b"ping"
        wait_for(lambda: device.baudrate() == 4800)
        write_all(device.master, b"pong")
        out, err = pyserial.communicate(timeout=30)
        assert (pyserial.returncode, out) == (0, "pong"), err
        assert gateway.stop() == 0, gateway.stderr
        # Instead of copying keys: a one-time code, pasted into `accept` (here through a pipe).
        code = lan.run(lan.box, "invite", "--ttl", "15m", "--name", "laptop", env=box).strip()
        assert code.startswith("msinv1")
        paired = lan.run(lan.laptop, "accept", env=laptop, stdin=code + "\n")
        assert "paired with" in paired
        link2 = tmp_path / "ttyLaptop"
        laptop_use = lan.start(lan.laptop, "use", "gps", "--pty", "--link", str(link2), env=laptop)
        processes.append(laptop_use)
        laptop_use.wait_line(r"/dev/pts/\d+")  # pinned by the invite: no --trust-new needed
        # Revoke by name: the live session ends within a second, and says why.
        lan.run(lan.box, "revoke", "laptop", env=box)
        assert laptop_use.wait(timeout=10) == 6
        assert "access revoked" in laptop_use.stderr, laptop_use.stderr
    finally:
        for proc in reversed(processes):
            proc.stop()
