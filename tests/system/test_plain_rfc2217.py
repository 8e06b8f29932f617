"""System and interop tests of plain RFC 2217: real processes, real PTYs, real sockets on loopback."""

from __future__ import annotations

import os
import random
import shutil
import socket
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from tests.helpers import (
    DevicePty,
    Proc,
    free_tcp_port,
    meshserial,
    pump_both,
    read_exact,
    run_meshserial,
    wait_for,
    write_all,
)

pytestmark = pytest.mark.system

ALL_BYTES = bytes(range(256))


@pytest.fixture
def shared(device: DevicePty, ms_env: dict[str, str]) -> Iterator[tuple[DevicePty, int, Proc]]:
    port = free_tcp_port()
    proc = meshserial("share", device.path, "--name", "dev", "--rfc2217", f"127.0.0.1:{port}", env=ms_env)
    try:
        proc.wait_line(r"sharing dev on rfc2217://127\.0\.0\.1:\d+")
        yield device, port, proc
    finally:
        assert proc.stop() in (0, -15), proc.stderr


def _open(port: int, **kwargs: object) -> serial.Serial:
    return serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", timeout=5, **kwargs)


@pytest.mark.interop
def test_pyserial_client_settings_reach_the_device(shared: tuple[DevicePty, int, Proc]) -> None:
    device, port, _ = shared
    started = time.monotonic()
    ser = _open(port, baudrate=9600)
    try:
        open_time = time.monotonic() - started
        assert device.baudrate() == 9600
        for rate in (115200, 57600):
            ser.baudrate = rate
            assert device.baudrate() == rate
        # Control lines and purges are acknowledged promptly (pyserial waits 3 s for a missing ack).
        for action in (
            lambda: setattr(ser, "dtr", False),
            lambda: setattr(ser, "rts", False),
            lambda: setattr(ser, "dtr", True),
            lambda: ser.send_break(0.01),
            ser.reset_input_buffer,
            ser.reset_output_buffer,
        ):
            t0 = time.monotonic()
            action()
            assert time.monotonic() - t0 < 1.0
        assert open_time < 2.0
        assert ser.cts in (True, False)  # a NOTIFY-MODEMSTATE arrived, else pyserial raises
    finally:
        ser.close()


@pytest.mark.interop
def test_pyserial_client_data_integrity(shared: tuple[DevicePty, int, Proc]) -> None:
    device, port, _ = shared
    ser = _open(port, baudrate=115200)
    try:
        # All 256 byte values, both directions (0xFF must survive telnet escaping).
        ser.write(ALL_BYTES)
        assert read_exact(device.master, 256) == ALL_BYTES
        write_all(device.master, ALL_BYTES)
        assert ser.read(256) == ALL_BYTES
        # 1 MiB of random data each way.
        blob = random.Random(7).randbytes(1 << 20)
        ser.write(blob)
        assert read_exact(device.master, len(blob), timeout=60) == blob
        write_all(device.master, blob, timeout=60)
        got = bytearray()
        deadline = time.monotonic() + 60
        while len(got) < len(blob) and time.monotonic() < deadline:
            got += ser.read(len(blob) - len(got))
        assert bytes(got) == blob
    finally:
        ser.close()


def test_second_client_is_refused_then_served_after_release(shared: tuple[DevicePty, int, Proc]) -> None:
    device, port, proc = shared
    first = _open(port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert b"in use" in data
    finally:
        first.close()
    # The server keeps serving after the refusal.
    second = _open(port)
    try:
        second.write(b"again")
        assert read_exact(device.master, 5) == b"again"
    finally:
        second.close()
    assert proc.proc.poll() is None


def test_malformed_telnet_closes_only_that_connection(shared: tuple[DevicePty, int, Proc]) -> None:
    device, port, proc = shared
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(5)
        # An endless sub-negotiation is a protocol violation (bounded SB buffer).
        sock.sendall(b"\xff\xfa\x2c\x00" + b"A" * 4096)
        # The server must close this connection (EOF or reset), not hang.
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    ser = _open(port)
    try:
        ser.write(b"ok")
        assert read_exact(device.master, 2) == b"ok"
    finally:
        ser.close()
    assert proc.proc.poll() is None
    assert proc.stderr.count("malformed") <= 1


def test_use_pty_against_share(
    shared: tuple[DevicePty, int, Proc], ms_env: dict[str, str], tmp_path: Path
) -> None:
    device, port, _ = shared
    link = tmp_path / "ttyREMOTE"
    client = meshserial("use", f"rfc2217://127.0.0.1:{port}", "--pty", "--link", str(link), env=ms_env)
    try:
        client.wait_line(r"/dev/pts/\d+")
        assert link.is_symlink()
        app = serial.Serial(str(link), 9600, timeout=5)
        try:
            app.baudrate = 57600
            wait_for(lambda: device.baudrate() == 57600)
            app.write(ALL_BYTES)
            assert read_exact(device.master, 256) == ALL_BYTES
            write_all(device.master, ALL_BYTES)
            assert app.read(256) == ALL_BYTES
        finally:
            app.close()
    finally:
        assert client.stop() == 0, client.stderr
    assert not link.exists() and not link.is_symlink()


def test_gateway_serves_pyserial(shared: tuple[DevicePty, int, Proc], ms_env: dict[str, str]) -> None:
    device, port, _ = shared
    local = free_tcp_port()
    gw = meshserial("use", f"rfc2217://127.0.0.1:{port}", "--listen", f"127.0.0.1:{local}", env=ms_env)
    try:
        gw.wait_line(r"rfc2217://127\.0\.0\.1:\d+")
        ser = _open(local, baudrate=19200)
        try:
            wait_for(lambda: device.baudrate() == 19200)
            ser.write(ALL_BYTES)
            assert read_exact(device.master, 256) == ALL_BYTES
            write_all(device.master, b"back")
            assert ser.read(4) == b"back"
        finally:
            ser.close()
    finally:
        assert gw.stop() == 0, gw.stderr


# ---- interop with ser2net and socat ---------------------------------------------------------------

ser2net = shutil.which("ser2net") or ("/usr/sbin/ser2net" if os.path.exists("/usr/sbin/ser2net") else None)


@pytest.fixture
def ser2net_server(device: DevicePty, tmp_path: Path) -> Iterator[tuple[DevicePty, int]]:
    if ser2net is None:
        pytest.skip("ser2net is not installed (apt-get install ser2net)")
    port = free_tcp_port()
    config = tmp_path / "ser2net.yaml"
    config.write_text(
        "connection: &con01\n"
        f"  accepter: telnet(rfc2217),tcp,127.0.0.1,{port}\n"
        f"  connector: serialdev,{device.path},9600n81,local,nobreak\n"
        "  options:\n"
        "    kickolduser: true\n"
    )
    proc = Proc([ser2net, "-n", "-d", "-c", str(config)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.proc.poll() is not None:
                    raise AssertionError(f"ser2net did not start: {proc.stderr}") from None
                time.sleep(0.05)
        yield device, port
    finally:
        proc.stop()


@pytest.mark.interop
def test_use_pty_against_ser2net(
    ser2net_server: tuple[DevicePty, int], ms_env: dict[str, str], tmp_path: Path
) -> None:
    device, port = ser2net_server
    link = tmp_path / "ttyS2N"
    client = meshserial("use", f"rfc2217://127.0.0.1:{port}", "--pty", "--link", str(link), env=ms_env)
    try:
        client.wait_line(r"/dev/pts/\d+")
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            attrs = termios.tcgetattr(fd)
            attrs[4] = attrs[5] = termios.B115200
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            wait_for(lambda: device.baudrate() == 115200)
            write_all(fd, ALL_BYTES)
            assert read_exact(device.master, 256) == ALL_BYTES
            write_all(device.master, ALL_BYTES)
            assert read_exact(fd, 256) == ALL_BYTES
            blob = random.Random(3).randbytes(256 * 1024)
            to_dev, to_app = pump_both(fd, device.master, blob, blob[::-1])
            assert to_dev == blob and to_app == blob[::-1]
        finally:
            os.close(fd)
    finally:
        assert client.stop() == 0, client.stderr


socat = shutil.which("socat")


@pytest.mark.interop
def test_socat_as_application(
    shared: tuple[DevicePty, int, Proc], ms_env: dict[str, str], tmp_path: Path
) -> None:
    if socat is None:
        pytest.skip("socat is not installed (apt-get install socat)")
    device, port, _ = shared
    link = tmp_path / "ttyAPP"
    client = meshserial("use", f"rfc2217://127.0.0.1:{port}", "--pty", "--link", str(link), env=ms_env)
    try:
        client.wait_line(r"/dev/pts/\d+")
        app_port = free_tcp_port()
        app = Proc([socat, f"TCP-LISTEN:{app_port},bind=127.0.0.1,reuseaddr", f"FILE:{link},raw,echo=0"])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    sock = socket.create_connection(("127.0.0.1", app_port), timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            with sock:
                sock.settimeout(10)
                sock.sendall(ALL_BYTES)
                assert read_exact(device.master, 256) == ALL_BYTES
                write_all(device.master, ALL_BYTES)
                got = b""
                while len(got) < 256:
                    got += sock.recv(256 - len(got))
                assert got == ALL_BYTES
        finally:
            app.stop()
    finally:
        assert client.stop() == 0, client.stderr


# ---- bad input ---------------------------------------------------------------------------------------


def _one_line_error(result: object, code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)  # type: ignore[attr-defined]
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("meshserial: error:"), result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]


def test_missing_device_is_one_line(ms_env: dict[str, str]) -> None:
    result = run_meshserial("share", "/dev/does-not-exist", "--rfc2217", "127.0.0.1:0", env=ms_env)
    _one_line_error(result, 3)
    assert "/dev/does-not-exist" in result.stderr


def test_address_in_use_is_one_line(device: DevicePty, ms_env: dict[str, str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_meshserial("share", device.path, "--rfc2217", f"127.0.0.1:{port}", env=ms_env)
    _one_line_error(result, 3)
    assert "in use" in result.stderr


def test_unreachable_server_is_one_line(ms_env: dict[str, str]) -> None:
    port = free_tcp_port()  # nothing listens there
    result = run_meshserial("use", f"rfc2217://127.0.0.1:{port}", "--pty", env=ms_env)
    _one_line_error(result, 4)


def test_server_that_is_not_rfc2217_is_one_line(ms_env: dict[str, str]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        result = run_meshserial("use", f"rfc2217://127.0.0.1:{port}", "--pty", env=ms_env, timeout=30)
    _one_line_error(result, 5)
    assert "RFC 2217" in result.stderr


def test_bad_target_and_flags_are_one_line(ms_env: dict[str, str]) -> None:
    _one_line_error(run_meshserial("use", "ftp://x", "--pty", env=ms_env), 2)
    _one_line_error(run_meshserial("share", "sim:nope", "--rfc2217", "127.0.0.1:0", env=ms_env), 2)
