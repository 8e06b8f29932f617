"""Sessions survive failures: killed connections, server restarts, devices that come and go.

Loopback only; the multi-host variants (link cuts, delay and loss) are in tests/faults/.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    DevicePty,
    Proc,
    Pump,
    free_tcp_port,
    meshserial,
    ok,
    private_home,
    read_exact,
    wait_for,
    write_all,
)

pytestmark = pytest.mark.system


@pytest.fixture
def pair(tmp_path: Path, device: DevicePty) -> Iterator[tuple[dict[str, str], dict[str, str], int]]:
    server_env = private_home(tmp_path, "server")
    client_env = private_home(tmp_path, "client")
    ok("keygen", env=server_env)
    ok("authorize", ok("keygen", env=client_env), env=server_env)
    yield server_env, client_env, free_tcp_port()


def _share(env: dict[str, str], device: DevicePty, port: int) -> Proc:
    proc = meshserial("share", f"{device.path}=gps", "--listen", f"127.0.0.1:{port}", "-v", env=env)
    proc.wait_line(r"sharing gps on")
    return proc


def _use_pty(env: dict[str, str], port: int, link: Path, *extra: str) -> Proc:
    """``use gps@127.0.0.1:PORT --pty`` once its PTY is up."""
    proc = meshserial("use", f"gps@127.0.0.1:{port}", "--pty", "--link", str(link), *extra, env=env)
    proc.wait_line(r"/dev/pts/\d+")
    return proc


def _open_app(link: Path) -> int:
    import termios
    import tty

    fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    # TCSANOW: a flush (TCSAFLUSH) would be forwarded as a purge and race with the data that follows.
    tty.setraw(fd, termios.TCSANOW)
    return fd


ss = shutil.which("ss")


@pytest.mark.skipif(ss is None or os.geteuid() != 0, reason="needs root and ss (iproute2) to kill sockets")
def test_killed_connection_mid_transfer_loses_nothing(
    pair: tuple[dict[str, str], dict[str, str], int], device: DevicePty, tmp_path: Path
) -> None:
    server_env, client_env, port = pair
    server = _share(server_env, device, port)
    link = tmp_path / "ttyR"
    client = _use_pty(client_env, port, link, "--trust-new", "-v")
    try:
        fd = _open_app(link)
        try:
            up = random.Random(1).randbytes(2 << 20)
            down = random.Random(2).randbytes(2 << 20)
            pump = Pump(fd, device.master, up, down, chunk=4096)
            wait_for(lambda: pump.progress > len(up) // 2 or pump.error is not None, timeout=60)
            killed = subprocess.run(
                [ss, "-K", "dst", "127.0.0.1", "dport", "=", str(port)],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            assert killed.returncode == 0, killed.stderr
            to_device, to_app = pump.join()
            assert hashlib.sha256(to_device).digest() == hashlib.sha256(up).digest()
            assert hashlib.sha256(to_app).digest() == hashlib.sha256(down).digest()
            # The application's port was never closed: it still works.
            write_all(fd, b"after")
            assert read_exact(device.master, 5) == b"after"
        finally:
            os.close(fd)
        assert "resumed after" in client.stderr, client.stderr
    finally:
        code = client.stop()
        server.stop()
        assert code == 0, client.stderr


def test_server_restart_new_session_flows_again(
    pair: tuple[dict[str, str], dict[str, str], int], device: DevicePty, tmp_path: Path
) -> None:
    server_env, client_env, port = pair
    server = _share(server_env, device, port)
    link = tmp_path / "ttyR"
    client = _use_pty(client_env, port, link, "--trust-new", "--baud", "57600")
    try:
        fd = _open_app(link)
        try:
            write_all(fd, b"one")
            assert read_exact(device.master, 3) == b"one"
            server.stop()
            server = _share(server_env, device, port)
            # Back within 2 s of the server's return (the client's backoff is capped at 1 s), with the
            # settings re-applied to the new session.
            client.wait_line(r"new session after", timeout=2.0, stderr=True)
            write_all(fd, b"two")
            assert read_exact(device.master, 3, timeout=10) == b"two"
            wait_for(lambda: device.baudrate() == 57600)
            write_all(device.master, b"back")
            assert read_exact(fd, 4) == b"back"
        finally:
            os.close(fd)
    finally:
        code = client.stop()
        server.stop()
        assert code == 0, client.stderr


def test_scrollback_is_replayed_on_attach(
    pair: tuple[dict[str, str], dict[str, str], int], device: DevicePty, tmp_path: Path
) -> None:
    server_env, client_env, port = pair
    server = _share(server_env, device, port)
    try:
        # A watcher-less port still keeps recent output.
        first = _use_pty(client_env, port, tmp_path / "t1", "--trust-new")
        write_all(device.master, b"$GPGGA,old*00\r\n")
        first.stop()
        client = _use_pty(client_env, port, tmp_path / "t2", "--scrollback", "30s")
        fd = _open_app(tmp_path / "t2")
        try:
            assert b"$GPGGA,old*00" in read_exact(fd, 15)
        finally:
            os.close(fd)
            client.stop()
    finally:
        server.stop()
