"""What a user of `use` sees when things happen to the session: a crash, an outage, an ending."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import DevicePty, Proc, free_tcp_port, meshserial, ok, private_home, read_exact, write_all
from tests.system.test_resume import _open_app, _share, _use_pty

pytestmark = pytest.mark.system


class Site:
    def __init__(self, tmp_path: Path, device: DevicePty) -> None:
        self.tmp_path = tmp_path
        self.device = device
        self.env = private_home(tmp_path, "server")
        ok("keygen", env=self.env)
        self.port = free_tcp_port()
        self.server = _share(self.env, device, self.port)

    def client(self, name: str, *authorize: str) -> dict[str, str]:
        env = private_home(self.tmp_path, name)
        ok("authorize", ok("keygen", env=env), "--name", name, *authorize, env=self.env)
        ok("trust", ok("id", env=self.env), "--name", f"127.0.0.1:{self.port}", env=env)
        return env

    def use(self, env: dict[str, str], link: str, *extra: str) -> Proc:
        return _use_pty(env, self.port, self.tmp_path / link, *extra)


@pytest.fixture
def site(tmp_path: Path, device: DevicePty) -> Iterator[Site]:
    s = Site(tmp_path, device)
    try:
        yield s
    finally:
        s.server.stop()


def test_a_crashed_client_takes_its_own_port_back_at_once(site: Site) -> None:
    desk, laptop = site.client("desk"), site.client("laptop")
    first = site.use(desk, "tty1")
    first.proc.send_signal(signal.SIGKILL)  # no goodbye: the server keeps the session for a resume
    first.wait(10)
    site.server.wait_line(r"desk .* lost its connection to gps", stderr=True)
    # Another client is told who holds the port and how to take it over.
    other = meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", env=laptop)
    assert other.wait(timeout=20) == 6
    assert "held by desk" in other.stderr and "--takeover" in other.stderr, other.stderr
    # The same identity just starts again: its old session is replaced at once.
    again = site.use(desk, "tty2")
    assert again.stop() == 0, again.stderr


def test_takeover_of_a_lost_session_by_another_client(site: Site) -> None:
    desk, laptop = site.client("desk"), site.client("laptop")
    first = site.use(desk, "tty1")
    first.proc.send_signal(signal.SIGKILL)
    first.wait(10)
    site.server.wait_line(r"desk .* lost its connection to gps", stderr=True)
    taker = site.use(laptop, "tty2", "--takeover")
    assert taker.stop() == 0, taker.stderr


def test_what_the_application_writes_during_an_outage_is_delivered(site: Site) -> None:
    env = site.client("desk")
    link = site.tmp_path / "ttyO"
    client = _use_pty(env, site.port, link, "-v")
    try:
        fd = _open_app(link)
        try:
            write_all(fd, b"before")
            assert read_exact(site.device.master, 6) == b"before"
            assert site.server.stop() == 0
            client.wait_line(r"connection lost .* reconnecting", stderr=True)
            write_all(fd, b"during the outage")  # the server is down: nobody could have received it
            site.server = _share(site.env, site.device, site.port)
            line = client.wait_line(r"new session after .*", timeout=10, stderr=True).group(0)
            assert "17 bytes written meanwhile were sent" in line, line
            assert read_exact(site.device.master, 17) == b"during the outage"
        finally:
            os.close(fd)
    finally:
        assert client.stop() == 0, client.stderr


def test_an_expired_client_is_told_and_does_not_reconnect(site: Site) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    env = site.client("temp", "--expires", expires.isoformat())
    client = site.use(env, "ttyE")
    assert client.wait(timeout=15) == 6
    lines = [line for line in client.stderr.splitlines() if "error" in line]
    assert lines == ["meshserial: error: the server ended the session: access expired"], client.stderr
    assert "reconnecting" not in client.stderr


def test_a_lost_connection_is_said_once(site: Site) -> None:
    env = site.client("desk")
    client = site.use(env, "ttyL", "--no-reconnect")
    assert site.server.stop() == 0
    assert client.wait(timeout=15) != 0
    error = [line for line in client.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and error[0].count("lost") == 1, client.stderr
