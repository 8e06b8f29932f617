"""`use … --listen`, the local RFC 2217 gateway, and quick reopening of plain RFC 2217 ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from tests.helpers import DevicePty, Proc, free_tcp_port, meshserial, ok, private_home, read_exact, write_all

pytestmark = [pytest.mark.system, pytest.mark.interop]


def _open(port: int) -> serial.Serial:
    # pyserial's own network timeout bounds the RFC 2217 negotiation: one second, as promised.
    return serial.serial_for_url(f"rfc2217://127.0.0.1:{port}?timeout=1", timeout=5)


def _probe(port: int, junk: bytes = b"") -> None:
    """What a health check or ``nc -z`` does: connect, maybe say something odd, close at once."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if junk:
            sock.sendall(junk)


class Secure:
    """A meshserial server sharing a device PTY, and client homes authorized on it."""

    def __init__(self, tmp_path: Path, device: DevicePty) -> None:
        self.tmp_path = tmp_path
        self.env = private_home(tmp_path, "server")
        ok("keygen", env=self.env)
        self.port = free_tcp_port()
        self.proc = meshserial(
            "share",
            f"{device.path}=gps",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--no-mdns",
            "-v",
            env=self.env,
        )
        self.proc.wait_line("sharing gps on")

    def client(self, name: str) -> dict[str, str]:
        env = private_home(self.tmp_path, name)
        ok("authorize", ok("keygen", env=env), "--name", name, env=self.env)
        return env

    def gateway(self, env: dict[str, str], *extra: str) -> tuple[Proc, int]:
        local = free_tcp_port()
        target = f"gps@127.0.0.1:{self.port}"
        proc = meshserial(
            "use", target, "--listen", f"127.0.0.1:{local}", "--trust-new", "-v", *extra, env=env
        )
        proc.wait_line(r"rfc2217://127\.0\.0\.1:\d+")
        return proc, local


@pytest.fixture
def secure(tmp_path: Path, device: DevicePty) -> Iterator[Secure]:
    site = Secure(tmp_path, device)
    try:
        yield site
    finally:
        assert site.proc.stop() == 0, site.proc.stderr


def test_probes_do_not_break_the_next_client(secure: Secure, device: DevicePty) -> None:
    gateway, local = secure.gateway(secure.client("desk"))
    try:
        for round_ in range(3):
            # Bare connections, and half a telnet negotiation (data a probe sent would be data for the
            # device, as with any RFC 2217 server).
            for junk in (b"", b"", b"\xff\xfb", b"\xff\xfb\x2c\xff"):
                _probe(local, junk)
            ser = _open(local)
            try:
                ser.write(bytes([round_]) * 3)
                assert read_exact(device.master, 3) == bytes([round_]) * 3
                write_all(device.master, b"ok")
                assert ser.read(2) == b"ok"
            finally:
                ser.close()
    finally:
        assert gateway.stop() == 0, gateway.stderr


def test_an_idle_gateway_leaves_the_port_free(secure: Secure, device: DevicePty, tmp_path: Path) -> None:
    gateway, local = secure.gateway(secure.client("desk"), "--linger", "0.5")
    other = secure.client("laptop")
    try:
        # Nobody uses the gateway: another client can take the port.
        use = meshserial("use", f"gps@127.0.0.1:{secure.port}", "--pty", "--trust-new", env=other)
        use.wait_line(r"/dev/pts/\d+")
        # While it holds the port, a local client of the gateway is told so, in one line.
        with socket.create_connection(("127.0.0.1", local), timeout=5) as sock:
            sock.settimeout(10)
            said = b""
            while chunk := sock.recv(4096):
                said += chunk
        assert b"in use by laptop" in said, said
        assert use.stop() == 0, use.stderr
        # Now the gateway's client gets the port; closing and reopening at once keeps the session.
        for _ in range(3):
            ser = _open(local)
            ser.write(b"x")
            assert read_exact(device.master, 1) == b"x"
            ser.close()
        assert gateway.stderr.count("opening gps@") == 2  # the failed attempt, then one session
        # Half a second after the last local client, the gateway lets go of the port.
        gateway.wait_line(r"no local client for 0\.5 s: closing", stderr=True)
        again = meshserial("use", f"gps@127.0.0.1:{secure.port}", "--pty", "--trust-new", env=other)
        again.wait_line(r"/dev/pts/\d+")
        assert again.stop() == 0, again.stderr
    finally:
        assert gateway.stop() == 0, gateway.stderr


@pytest.fixture
def plain(device: DevicePty, tmp_path: Path) -> Iterator[int]:
    port = free_tcp_port()
    env = private_home(tmp_path, "plain")
    proc = meshserial("share", f"{device.path}=dev", "--rfc2217", f"127.0.0.1:{port}", "--no-mdns", env=env)
    try:
        proc.wait_line("sharing dev on rfc2217://")
        yield port
    finally:
        assert proc.stop() == 0, proc.stderr


def test_quick_reopen_direct_and_through_the_gateway(
    plain: int, device: DevicePty, ms_env: dict[str, str]
) -> None:
    """Open, use and close many times in a row, as test harnesses and flashing tools do."""

    def cycles(port: int, count: int) -> None:
        for i in range(count):
            ser = _open(port)
            try:
                ser.write(bytes([i]))
                assert read_exact(device.master, 1) == bytes([i])
            finally:
                ser.close()
            _probe(port)  # and a probe right behind the close

    cycles(plain, 15)
    local = free_tcp_port()
    gateway = meshserial("use", f"rfc2217://127.0.0.1:{plain}", "--listen", f"127.0.0.1:{local}", env=ms_env)
    try:
        gateway.wait_line(r"rfc2217://127\.0\.0\.1:\d+")
        cycles(local, 15)
    finally:
        assert gateway.stop() == 0, gateway.stderr


def test_a_setting_the_device_cannot_carry_gets_one_answer_in_both_roles(
    plain: int, device: DevicePty, ms_env: dict[str, str]
) -> None:
    """pyserial asks for 7E1 of a port whose device (a PTY) cannot do it: acknowledged as asked by
    share --rfc2217 and by the gateway alike, so pyserial opens it in both cases."""
    local = free_tcp_port()
    gateway = meshserial("use", f"rfc2217://127.0.0.1:{plain}", "--listen", f"127.0.0.1:{local}", env=ms_env)
    try:
        gateway.wait_line(r"rfc2217://127\.0\.0\.1:\d+")
        for port in (plain, local):
            ser = serial.serial_for_url(
                f"rfc2217://127.0.0.1:{port}?timeout=1", bytesize=7, parity="E", stopbits=1, timeout=5
            )
            try:
                ser.write(b"7E1")
                assert read_exact(device.master, 3) == b"7E1"
            finally:
                ser.close()
    finally:
        assert gateway.stop() == 0, gateway.stderr
