"""Mixed-up endpoints: the encrypted and the plain protocol pointed at each other say so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import DevicePty, free_tcp_port, meshserial, ok, private_home, run_meshserial

pytestmark = pytest.mark.system


def test_secure_client_at_a_plain_port(tmp_path: Path, device: DevicePty) -> None:
    env = private_home(tmp_path, "both")
    port = free_tcp_port()
    share = meshserial("share", f"{device.path}=dev", "--rfc2217", f"127.0.0.1:{port}", "--no-mdns", env=env)
    try:
        share.wait_line("sharing dev on rfc2217://")
        ok("keygen", env=env)
        result = run_meshserial("use", f"dev@127.0.0.1:{port}", "--pty", "--no-reconnect", env=env)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"meshserial: error: 127.0.0.1:{port} is a plain RFC 2217 server: use rfc2217://127.0.0.1:{port}"
        ], result.stderr
    finally:
        assert share.stop() == 0


def test_plain_client_at_the_encrypted_port(tmp_path: Path, device: DevicePty) -> None:
    env = private_home(tmp_path, "server")
    ok("keygen", env=env)
    port = free_tcp_port()
    share = meshserial("share", f"{device.path}=gps", "--listen", f"127.0.0.1:{port}", "--no-mdns", env=env)
    try:
        share.wait_line("sharing gps on")
        result = run_meshserial(
            "use", f"rfc2217://127.0.0.1:{port}", "--pty", env=private_home(tmp_path, "c")
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "this is meshserial's encrypted service; use NAME@HOST:PORT" in lines[0], lines
        assert share.proc.poll() is None
    finally:
        assert share.stop() == 0


def test_an_address_without_a_port_name(tmp_path: Path) -> None:
    result = run_meshserial("use", "198.18.0.1:7217", "--pty", env=private_home(tmp_path, "c"))
    assert result.returncode == 2
    assert "NAME@198.18.0.1:7217" in result.stderr
