"""Small leaks: what a refused stranger learns, who can open a client's virtual port."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from tests.helpers import DevicePty, free_tcp_port, meshserial, ok, private_home

pytestmark = pytest.mark.system


def test_a_refused_plain_client_learns_busy_and_nothing_more(tmp_path: Path, device: DevicePty) -> None:
    env = private_home(tmp_path, "srv")
    port = free_tcp_port()
    share = meshserial("share", f"{device.path}=dev", "--rfc2217", f"127.0.0.1:{port}", "--no-mdns", env=env)
    try:
        share.wait_line(r"sharing dev on rfc2217://")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as holder:
            holder.recv(64)  # the holder is attached once its negotiation has started
            with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
                late.settimeout(5)
                said = b""
                while chunk := late.recv(4096):
                    said += chunk
        text = said.decode()
        assert "port dev is in use" in text
        assert "127.0.0.1" not in text and "since" not in text, text  # no holder, no time
    finally:
        assert share.stop() == 0


def test_the_client_pty_is_private(tmp_path: Path, device: DevicePty) -> None:
    server = private_home(tmp_path, "server")
    ok("keygen", env=server)
    client = private_home(tmp_path, "client")
    ok("authorize", ok("keygen", env=client), env=server)
    port = free_tcp_port()
    share = meshserial(
        "share", f"{device.path}=gps", "--listen", f"127.0.0.1:{port}", "--no-mdns", env=server
    )
    try:
        share.wait_line("sharing gps")
        use = meshserial("use", f"gps@127.0.0.1:{port}", "--pty", "--trust-new", env=client)
        try:
            path = use.wait_line(r"(/dev/pts/\d+)").group(1)
            mode = stat.S_IMODE(os.stat(path).st_mode)
            assert mode & 0o077 in (0, 0o020), f"{path} has mode {mode:04o}"
        finally:
            assert use.stop() == 0, use.stderr
    finally:
        assert share.stop() == 0
