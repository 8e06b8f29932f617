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
        self.clients: list[Proc] = []  # stopped at the end whatever a test left running

    def client(self, name: str, *authorize: str) -> dict[str, str]:
        env = private_home(self.tmp_path, name)
        ok("authorize", ok("keygen", env=env), "--name", name, *authorize, env=self.env)
        ok("trust", ok("id", env=self.env), "--name", f"127.0.0.1:{self.port}", env=env)
        return env

    def use(self, env: dict[str, str], link: str, *extra: str) -> Proc:
        proc = _use_pty(env, self.port, self.tmp_path / link, *extra)
        self.clients.append(proc)
        return proc


@pytest.fixture
def site(tmp_path: Path, device: DevicePty) -> Iterator[Site]:
    s = Site(tmp_path, device)
    try:
        yield s
    finally:
        for client in s.clients:
            client.stop()
        s.server.stop()


def test_a_crashed_client_takes_its_own_port_back_at_once(site: Site) -> None:
    desk, laptop = site.client("desk"), site.client("laptop")
    first = site.use(desk, "tty1")
    first.proc.send_signal(signal.SIGKILL)  # no goodbye: the server keeps the session for a resume
    first.wait(10)
    site.server.wait_line(r"desk .* lost its connection to gps", stderr=True)
    # Another client is told who holds the port and how to take it over.
    other = meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", env=laptop)
    try:
        code = other.wait(timeout=20)
    finally:
        other.stop()  # one that got in (the rule broken) must not outlive the test
    assert code == 6
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


def _repoint(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _state_in_list(env: dict[str, str]) -> str:
    import json

    from tests.helpers import run_meshserial

    result = run_meshserial("list", "--interface", "lo", "--json", "--timeout", "2", env=env)
    assert result.returncode == 0, result.stderr
    entries = [e for e in json.loads(result.stdout) if e["name"] == "gps"]
    assert len(entries) == 1, result.stdout
    return str(entries[0]["state"])


def test_device_state_reaches_list_and_use(tmp_path: Path) -> None:
    symlink = tmp_path / "ttyGPS"  # not there yet: share --wait waits for it
    env = private_home(tmp_path, "server")
    ok("keygen", env=env)
    client = private_home(tmp_path, "client")
    ok("authorize", ok("keygen", env=client), env=env)
    port = free_tcp_port()
    share = meshserial("share", f"{symlink}=gps", "--wait", "--listen", f"127.0.0.1:{port}", env=env)
    first: DevicePty | None = None
    second: DevicePty | None = None
    use: Proc | None = None
    try:
        share.wait_line(rf"{symlink} is not there yet; waiting for it", stderr=True)  # without -v
        share.wait_line("advertising gps")
        assert _state_in_list(client) == "offline"
        first = DevicePty()
        _repoint(symlink, first.path)
        use = meshserial("use", f"gps@127.0.0.1:{port}", "--pty", "--trust-new", env=client)
        use.wait_line(r"/dev/pts/\d+")
        assert _state_in_list(client) == "in-use"
        first.close()  # unplugged
        use.wait_line("device unplugged on the server", stderr=True)
        second = DevicePty()
        _repoint(symlink, second.path)
        use.wait_line("device back on the server", stderr=True)
        assert use.proc.poll() is None
    finally:
        if use is not None:
            assert use.stop() == 0, use.stderr
        assert share.stop() == 0, share.stderr
        for dev in (first, second):
            if dev is not None:
                dev.close()
