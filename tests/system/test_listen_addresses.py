"""Addresses to listen on as people type them: a bare PORT, as ser2net and socat take it.

A bare port binds every interface for ``share --listen`` (authenticated, like its default) and
127.0.0.1 for the unauthenticated endpoints (``share --rfc2217``, ``use --listen``) and the rendezvous
(which expects TLS in front of it). Everything here binds loopback only; ``share --listen`` with a
bare port is checked at the parser, so that no test opens a port on every interface.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import serial

from meshserial.cli import build_parser
from tests.helpers import meshserial, run_meshserial

pytestmark = pytest.mark.system


def test_bare_ports_for_plain_rfc2217_bind_loopback_and_serve(ms_env: dict[str, str]) -> None:
    share = meshserial("share", "sim:echo=loop", "--rfc2217", "0", "--no-mdns", env=ms_env)
    gateway = None
    try:
        plain = int(share.wait_line(r"sharing loop on rfc2217://127\.0\.0\.1:(\d+)$")[1])
        gateway = meshserial("use", f"rfc2217://127.0.0.1:{plain}", "--listen", "0", env=ms_env)
        local = int(gateway.wait_line(r"on rfc2217://127\.0\.0\.1:(\d+)$")[1])
        with serial.serial_for_url(f"rfc2217://127.0.0.1:{local}", timeout=10) as port:
            port.write(b"bare port\n")
            assert port.read(10) == b"bare port\n"
    finally:
        if gateway is not None:
            assert gateway.stop() == 0, gateway.stderr
        assert share.stop() == 0, share.stderr


def test_rendezvous_bare_port(ms_env: dict[str, str], tmp_path: Path) -> None:
    rdv = meshserial("rendezvous", "--listen", "0", "--db", f"{tmp_path}/r.sqlite3", env=ms_env)
    try:
        rdv.wait_line(r"^rendezvous listening on http://127\.0\.0\.1:\d+$")
    finally:
        assert rdv.stop() == 0, rdv.stderr


@pytest.mark.parametrize(
    ("argv", "key", "expected"),
    [
        (["share", "sim:echo", "--listen", "18220"], "listen", ("0.0.0.0", 18220)),
        (["share", "sim:echo", "--listen", "[::1]:18220"], "listen", ("::1", 18220)),
        (["share", "sim:echo", "--listen", "192.0.2.1"], "listen", ("192.0.2.1", 7217)),
        (["share", "sim:echo", "--rfc2217", "7218"], "rfc2217", ("127.0.0.1", 7218)),
        (["share", "sim:echo", "--rfc2217", ":7218"], "rfc2217", ("0.0.0.0", 7218)),
        (["use", "x@h", "--listen", "7300"], "listen", ("127.0.0.1", 7300)),
        (["use", "x@h", "--listen", "0.0.0.0:7300"], "listen", ("0.0.0.0", 7300)),
    ],
)
def test_what_a_bare_port_binds(argv: list[str], key: str, expected: tuple[str, int]) -> None:
    assert getattr(build_parser().parse_args(argv), key) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["share", "sim:echo", "--listen", "70000"], "port 70000 is out of range"),
        (["use", "x@h", "--listen", "99999999999"], "out of range"),
        (["use", "x@h", "--listen", "host"], "expected HOST:PORT"),
    ],
)
def test_bad_listen_addresses(ms_env: dict[str, str], argv: list[str], message: str) -> None:
    result = run_meshserial(*argv, env=ms_env)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["share"], "a bare PORT listens on every interface"),
        (["share"], "A bare PORT listens on 127.0.0.1 only"),
        (["use"], "PORT listens on 127.0.0.1 only, since the endpoint is unauthenticated"),
        (["rendezvous"], "a bare PORT listens on 127.0.0.1"),
    ],
)
def test_help_says_what_a_bare_port_binds(ms_env: dict[str, str], command: list[str], said: str) -> None:
    result = run_meshserial(*command, "--help", env=ms_env)
    assert result.returncode == 0
    assert said in " ".join(result.stdout.split()), result.stdout
