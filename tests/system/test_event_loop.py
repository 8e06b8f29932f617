"""The event loop a command runs on: uvloop's when installed, asyncio's own otherwise, ``MESHSERIAL_LOOP``
to choose; and data moving end to end under each loop, encrypted and plain.

uvloop's transports are not :class:`asyncio.Transport` subclasses, so code that checked
``isinstance(transport, asyncio.Transport)`` in ``connection_made`` failed on the first connection under
it; the full exchanges below run under both loops so that it cannot come back. (The rest of the suite
runs on asyncio's own loop, which a plain install uses: tests/conftest.py sets ``MESHSERIAL_LOOP``.)
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    DevicePty,
    Proc,
    free_tcp_port,
    meshserial,
    ok,
    private_home,
    pump_both,
    read_exact,
    run_meshserial,
    wait_for,
    write_all,
)

pytestmark = pytest.mark.system

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
NO_UVLOOP = "uvloop is not installed (pip install -e '.[fast]')"
UVLOOP = pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP))
LOOP_LINE = r"DEBUG: event loop: "


def _env(tmp_path: Path, name: str, loop: str | None) -> dict[str, str]:
    env = private_home(tmp_path, name)
    env.pop("MESHSERIAL_LOOP", None)
    if loop is not None:
        env["MESHSERIAL_LOOP"] = loop
    return env


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("meshserial: error:"), result.stderr
    return lines[0]


def _share_args(port: int) -> list[str]:
    return ["sim:echo", "--listen", f"127.0.0.1:{port}", "--no-mdns"]


# ---- choosing the loop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["bogus", "uvloop2", "trio"])
def test_bad_loop_value_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    env = _env(tmp_path, "s", value)
    result = run_meshserial("share", *_share_args(free_tcp_port()), env=env)
    line = _one_line_error(result, 2)
    assert f"MESHSERIAL_LOOP='{value}'" in line and "asyncio, uvloop or auto" in line, line
    # Commands that run no event loop do not read it.
    assert run_meshserial("keygen", env=env).returncode == 0


def _without_uvloop(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` for a Python in which ``import uvloop`` fails, installed or not."""
    blocker = tmp_path / "no-uvloop" / "uvloop"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("uvloop blocked by the test")\n')
    paths = [str(blocker.parent), env.get("PYTHONPATH", "")]
    return dict(env, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def test_uvloop_required_but_missing_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = _without_uvloop(tmp_path, _env(tmp_path, "s", "uvloop"))
    line = _one_line_error(run_meshserial("share", *_share_args(free_tcp_port()), env=env), 2)
    assert "MESHSERIAL_LOOP=uvloop" in line and "pip install 'meshserial[fast]'" in line, line


def test_without_uvloop_the_default_is_asyncio(tmp_path: Path) -> None:
    env = _without_uvloop(tmp_path, _env(tmp_path, "s", None))
    proc = meshserial("-vv", "share", *_share_args(free_tcp_port()), env=env)
    try:
        proc.wait_line(r"^sharing echo on ")
        line = proc.wait_line(LOOP_LINE + r"(.*)", stderr=True).group(1)
    finally:
        assert proc.stop() == 0, proc.stderr
    assert line.startswith("asyncio (uvloop: uvloop blocked by the test)"), line


@pytest.mark.parametrize(
    ("loop", "expected"),
    [
        ("asyncio", r"asyncio$"),
        (" AsyncIO ", r"asyncio$"),
        pytest.param(None, r"uvloop \S+$", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)),
        pytest.param("auto", r"uvloop \S+$", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)),
        pytest.param("uvloop", r"uvloop \S+$", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason=NO_UVLOOP)),
    ],
)
def test_the_chosen_loop_runs_listens_refuses_and_stops(
    tmp_path: Path, loop: str | None, expected: str
) -> None:
    """What works under either loop without a connection: start, listen, log the loop at debug, a
    connect refused (exit 4, one line), a clean stop on SIGTERM."""
    env = _env(tmp_path, "s", loop)
    ok("keygen", env=env)
    proc = meshserial("-vv", "share", *_share_args(free_tcp_port()), env=env)
    try:
        proc.wait_line(r"^sharing echo on 127\.0\.0\.1:")
        line = proc.wait_line(LOOP_LINE + r"(.*)", stderr=True).group(1)
        assert re.match(expected, line), line
    finally:
        assert proc.stop() == 0, proc.stderr
    # The port is closed now: the client fails before any connection exists.
    result = run_meshserial("use", f"echo@127.0.0.1:{free_tcp_port()}", "--pty", "--no-mdns", env=env)
    assert "cannot connect" in _one_line_error(result, 4)


# ---- data under each loop ------------------------------------------------------------------------------


class Pair:
    """``share`` of a device PTY and ``use --pty`` of it, both on one loop, encrypted or plain."""

    def __init__(self, tmp_path: Path, device: DevicePty, loop: str, *, secure: bool) -> None:
        self.device = device
        self.link = tmp_path / "ttyAPP"
        server_env, client_env = _env(tmp_path, "server", loop), _env(tmp_path, "client", loop)
        port = free_tcp_port()
        self.procs: list[Proc] = []
        if secure:
            ok("keygen", env=server_env)
            ok("authorize", ok("keygen", env=client_env).splitlines()[-1], env=server_env)
            listen, target = ["--listen", f"127.0.0.1:{port}"], [f"dev@127.0.0.1:{port}", "--trust-new"]
        else:
            listen, target = ["--rfc2217", f"127.0.0.1:{port}"], [f"rfc2217://127.0.0.1:{port}"]
        server = meshserial("-vv", "share", f"{device.path}=dev", *listen, "--no-mdns", env=server_env)
        self.procs.append(server)
        server.wait_line(r"^sharing dev on ")
        client = meshserial("-vv", "use", *target, "--pty", "--link", str(self.link), env=client_env)
        self.procs.append(client)
        client.wait_line(r"/dev/pts/\d+")
        self.loops = [proc.wait_line(LOOP_LINE + r"(\S+)", stderr=True).group(1) for proc in self.procs]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            assert proc.stop() == 0, proc.stderr


@pytest.fixture(params=["secure", "plain"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pair(tmp_path: Path, device: DevicePty, loop: str, mode: str) -> Iterator[Pair]:
    started = Pair(tmp_path, device, loop, secure=mode == "secure")
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.parametrize("loop", ["asyncio", UVLOOP])
def test_data_and_settings_move_under_each_loop(pair: Pair, loop: str) -> None:
    assert pair.loops == [loop, loop]
    fd = os.open(pair.link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        attrs = termios.tcgetattr(fd)
        attrs[4] = attrs[5] = termios.B115200
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        wait_for(lambda: pair.device.baudrate() == 115200)
        write_all(fd, bytes(range(256)))
        assert read_exact(pair.device.master, 256) == bytes(range(256))
        write_all(pair.device.master, bytes(range(256)))
        assert read_exact(fd, 256) == bytes(range(256))
        blob = random.Random(7).randbytes(256 * 1024)
        to_dev, to_app = pump_both(fd, pair.device.master, blob, blob[::-1])
        assert to_dev == blob and to_app == blob[::-1]
    finally:
        os.close(fd)
