"""System tests of the encrypted default mode: real processes, keys in private homes, loopback TCP."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from meshserial.keys import Identity
from meshserial.proto import session as sess
from meshserial.proto.channel import ControlReceived, PeerIdentified, SecureChannel
from tests.helpers import (
    DevicePty,
    Proc,
    free_tcp_port,
    meshserial,
    ok,
    private_home,
    read_exact,
    run_meshserial,
    wait_for,
    write_all,
)

pytestmark = pytest.mark.system

ALL_BYTES = bytes(range(256))


class Site:
    """A server home sharing one device PTY, and a helper to make client homes."""

    def __init__(self, tmp_path: Path, device: DevicePty) -> None:
        self.tmp_path = tmp_path
        self.device = device
        self.env = private_home(tmp_path, "server")
        self.server_id = ok("keygen", env=self.env)
        self.port = free_tcp_port()
        self.proc = meshserial(
            "share", f"{device.path}=gps", "--listen", f"127.0.0.1:{self.port}", "-v", env=self.env
        )
        self.proc.wait_line(r"sharing gps on 127\.0\.0\.1:\d+ as ms1")
        self._clients = 0

    def client(self, *, authorize: str | None = "*=rw", name: str | None = None) -> dict[str, str]:
        self._clients += 1
        env = private_home(self.tmp_path, f"client{self._clients}")
        client_id = ok("keygen", env=env)
        if authorize is not None:
            extra = ["--name", name] if name else []
            ok("authorize", client_id, "--ports", authorize, *extra, env=self.env)
        return env

    def use_pty(self, env: dict[str, str], link: Path, *extra: str) -> Proc:
        proc = meshserial("use", f"gps@127.0.0.1:{self.port}", "--pty", "--link", str(link), *extra, env=env)
        proc.wait_line(r"/dev/pts/\d+")
        return proc

    def stop(self) -> None:
        code = self.proc.stop()
        assert code == 0, self.proc.stderr


@pytest.fixture
def site(tmp_path: Path, device: DevicePty) -> Iterator[Site]:
    s = Site(tmp_path, device)
    try:
        yield s
    finally:
        s.stop()


def _nothing_readable(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return not ready


def test_encrypted_pty_moves_data_and_baud(site: Site, tmp_path: Path) -> None:
    env = site.client()
    link = tmp_path / "ttyGPS"
    client = site.use_pty(env, link, "--trust-new")
    try:
        app = serial.Serial(str(link), 9600, timeout=5)
        try:
            app.baudrate = 57600
            wait_for(lambda: site.device.baudrate() == 57600)
            app.write(ALL_BYTES)
            assert read_exact(site.device.master, 256) == ALL_BYTES
            write_all(site.device.master, ALL_BYTES)
            assert app.read(256) == ALL_BYTES
            blob = random.Random(5).randbytes(256 * 1024)
            app.write(blob)
            assert read_exact(site.device.master, len(blob), timeout=30) == blob
        finally:
            app.close()
    finally:
        assert client.stop() == 0, client.stderr
    assert "trusting new server" in client.stderr
    # Pinned now: a second connection needs no --trust-new.
    again = site.use_pty(env, tmp_path / "ttyGPS2")
    assert again.stop() == 0, again.stderr


def test_unknown_server_is_refused_with_the_command_to_trust_it(site: Site) -> None:
    env = site.client()
    result = run_meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", env=env)
    assert result.returncode == 6, result.stderr
    assert "not trusted yet" in result.stderr and f"meshserial trust {site.server_id}" in result.stderr
    assert "Traceback" not in result.stderr


def test_changed_server_key_is_refused_even_with_trust_new(site: Site, tmp_path: Path) -> None:
    env = site.client()
    impostor = Identity.generate().id_string
    ok("trust", impostor, "--name", f"127.0.0.1:{site.port}", env=env)
    result = run_meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", "--trust-new", env=env)
    assert result.returncode == 6, result.stderr
    assert "impersonat" in result.stderr and "--replace" in result.stderr


def test_unauthorized_client_gets_nothing_and_sends_nothing(site: Site) -> None:
    env = site.client(authorize=None)
    write_all(site.device.master, b"secret device output")
    result = run_meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", "--trust-new", env=env)
    assert result.returncode == 6, result.stderr
    assert "not authorized" in result.stderr
    assert _nothing_readable(site.device.master)


def _raw_session(port: int, identity: Identity, hello: sess.Hello, data: bytes) -> list[sess.Message]:
    """Handshake as ``identity``, send hello and data in one burst, return the server's control messages."""
    channel = SecureChannel(
        initiator=True, static_private=identity.noise_private, payload=identity.handshake_payload({"v": 1})
    )
    channel.initiate()
    messages: list[sess.Message] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(channel.data_to_send())
        deadline = time.monotonic() + 10
        sent = False
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in channel.receive_data(chunk):
                if isinstance(event, PeerIdentified):
                    channel.accept_peer()
                    channel.send_control(sess.encode(hello))
                    channel.send_data(data)
                    sock.sendall(channel.data_to_send())
                    sent = True
                elif isinstance(event, ControlReceived):
                    messages.append(sess.decode(event.message))
            if sent and messages:
                break
    return messages


def test_unauthorized_key_data_never_reaches_the_device(site: Site) -> None:
    stranger = Identity.generate()
    answers = _raw_session(site.port, stranger, sess.Hello(port="gps"), b"rm -rf /\r\n" * 10)
    assert answers and isinstance(answers[0], sess.Deny)
    # Same answer for a port that does not exist: an unknown key learns nothing about ports.
    other = _raw_session(site.port, stranger, sess.Hello(port="nope"), b"")
    assert isinstance(other[0], sess.Deny) and "not authorized" in other[0].reason
    assert _nothing_readable(site.device.master)


def test_read_only_watcher(site: Site, tmp_path: Path) -> None:
    writer_env = site.client(name="alice")
    watcher_env = site.client(authorize="*=ro", name="carol")
    writer = site.use_pty(writer_env, tmp_path / "ttyW", "--trust-new")
    try:
        # A read-only key asking for read-write is refused with the fix.
        result = run_meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", "--trust-new", env=watcher_env)
        assert result.returncode == 6 and "--read-only" in result.stderr, result.stderr
        watcher = site.use_pty(watcher_env, tmp_path / "ttyR", "--read-only")
        try:
            fd = os.open(tmp_path / "ttyR", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            wfd = os.open(tmp_path / "ttyW", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                # The watcher's data and settings never reach the device.
                attrs = termios.tcgetattr(fd)
                attrs[4] = attrs[5] = termios.B1200
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
                write_all(fd, b"from the watcher")
                # The writer's bytes do, and act as a marker that the watcher's would have arrived first.
                write_all(wfd, b"W")
                assert read_exact(site.device.master, 1) == b"W"
                assert site.device.baudrate() != 1200
                # Device output reaches both.
                write_all(site.device.master, b"fix")
                assert read_exact(fd, 3) == b"fix"
                assert read_exact(wfd, 3) == b"fix"
            finally:
                os.close(fd)
                os.close(wfd)
        finally:
            assert watcher.stop() == 0, watcher.stderr
    finally:
        assert writer.stop() == 0, writer.stderr
    assert _nothing_readable(site.device.master)


def test_second_writer_is_refused_naming_the_holder(site: Site, tmp_path: Path) -> None:
    first_env = site.client(name="alice")
    second_env = site.client(name="bob")
    first = site.use_pty(first_env, tmp_path / "tty1", "--trust-new")
    try:
        result = run_meshserial("use", f"gps@127.0.0.1:{site.port}", "--pty", "--trust-new", env=second_env)
        assert result.returncode == 6, result.stderr
        assert "in use by alice" in result.stderr and "since" in result.stderr
    finally:
        assert first.stop() == 0
    # Released: the second writer gets it now.
    second = site.use_pty(second_env, tmp_path / "tty2")
    assert second.stop() == 0


def test_revocation_ends_a_live_session(site: Site, tmp_path: Path) -> None:
    env = site.client(name="mallory")
    link = tmp_path / "ttyM"
    client = site.use_pty(env, link, "--trust-new")
    ok("revoke", "mallory", env=site.env)
    code = client.wait(timeout=10)
    assert code == 6  # refused, and told why: not a network problem to retry
    assert "the server ended the session: access revoked" in client.stderr, client.stderr
    assert "reconnecting" not in client.stderr
    assert not link.exists()


def test_invite_pairs_without_copying_keys(site: Site, tmp_path: Path) -> None:
    code = ok(
        "invite", "--ports", "gps=rw", "--ttl", "5m", "--address", f"127.0.0.1:{site.port}", env=site.env
    )
    assert code.startswith("msinv1")
    env = private_home(tmp_path, "newcomer")
    out = ok("accept", code, env=env)
    assert "paired" in out and site.server_id in out
    # Pinned by the invite and authorized by it: no --trust-new needed.
    client = site.use_pty(env, tmp_path / "ttyN")
    assert client.stop() == 0, client.stderr
    # One use only.
    again = run_meshserial("accept", code, env=private_home(tmp_path, "latecomer"))
    assert again.returncode == 6 and "invite not accepted" in again.stderr, again.stderr


def test_garbage_and_oversized_handshakes_close_only_that_connection(site: Site, tmp_path: Path) -> None:
    for junk in (
        b"GET / HTTP/1.0\r\n\r\n",
        struct.pack(">H", 33) + b"x" * 33,
        b"\xff" * 70000,
        struct.pack(">H", 32) + bytes(32) + struct.pack(">H", 65535) + b"y" * 100,
    ):
        with socket.create_connection(("127.0.0.1", site.port), timeout=5) as sock:
            try:
                sock.sendall(junk)
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass
    env = site.client()
    client = site.use_pty(env, tmp_path / "ttyOK", "--trust-new")
    assert client.stop() == 0
    assert site.proc.proc.poll() is None


def test_handshake_flood_does_not_lock_out_a_legitimate_client(site: Site, tmp_path: Path) -> None:
    env = site.client()
    ok("trust", site.server_id, "--name", f"127.0.0.1:{site.port}", env=env)
    flood: list[socket.socket] = []
    try:
        # 200 half-open handshakes from other loopback addresses, some of them trickling bytes slowly.
        for i in range(200):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((f"127.0.0.{2 + i % 13}", 0))
            try:
                sock.connect(("127.0.0.1", site.port))
            except BlockingIOError:
                pass
            flood.append(sock)
        for sock in flood[::4]:
            try:
                sock.send(b"\x00")  # the first byte of a length prefix, then nothing
            except OSError:
                pass
        started = time.monotonic()
        client = site.use_pty(env, tmp_path / "ttyL")
        elapsed = time.monotonic() - started
        assert client.stop() == 0
        assert elapsed < 2.0 + 1.5  # 2 s for the session plus the interpreter start-up of the client
    finally:
        for sock in flood:
            sock.close()
