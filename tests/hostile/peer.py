"""Peers that misbehave on purpose, and a server to aim them at.

:class:`RawClient` speaks the real secure channel (the sans-IO :class:`SecureChannel`) over a blocking
socket, so it can do what meshserial's own client never does: stop reading, send odd RFC 2217, hammer
invites. :class:`Server` is a real ``meshserial share`` process on loopback sharing a PTY.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

from meshserial.keys import Identity
from meshserial.proto import session as sess
from meshserial.proto.channel import (
    ChannelEvent,
    Closed,
    ControlReceived,
    DataReceived,
    PeerIdentified,
    SecureChannel,
)
from tests.helpers import DevicePty, free_tcp_port, meshserial, ok, private_home

# RFC 2217 client -> server: IAC WILL COM-PORT-OPTION, then IAC SB COM-PORT-OPTION FLOWCONTROL-SUSPEND
# IAC SE (RFC 2217 section 3, command 8).
WILL_COM_PORT = bytes([255, 251, 44])
FLOW_SUSPEND = bytes([255, 250, 44, 8, 255, 240])


class Server:
    """``meshserial share DEVICE=gps --listen 127.0.0.1:PORT`` in a private home."""

    def __init__(self, tmp_path: Path, device: DevicePty, *extra: str, name: str = "server") -> None:
        self.tmp_path = tmp_path
        self.device = device
        self.env = private_home(tmp_path, name)
        self.server_id = ok("keygen", env=self.env)
        self.port = free_tcp_port()
        self.proc = meshserial(
            "share", f"{device.path}=gps", "--listen", f"127.0.0.1:{self.port}", "--no-mdns", "-v", *extra,
            env=self.env,
        )  # fmt: skip
        self.proc.wait_line(r"sharing gps on 127\.0\.0\.1:\d+ as ms1")

    def authorize(self, identity: Identity, *args: str) -> None:
        ok("authorize", identity.id_string, *args, env=self.env)

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        status = Path(f"/proc/{self.proc.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def stop(self) -> int:
        return self.proc.stop()


class RawClient:
    """One connection: handshake, one request, then whatever the test does."""

    def __init__(self, port: int, identity: Identity, *, host: str = "127.0.0.1") -> None:
        self.identity = identity
        self.channel = SecureChannel(
            initiator=True,
            static_private=identity.noise_private,
            payload=identity.handshake_payload({"v": 1}),
        )
        self.sock = socket.create_connection((host, port), timeout=5)
        self.controls: list[sess.Message] = []
        self.data = bytearray()
        self.closed = False  # the server's CLOSE record arrived
        self.eof = False
        self.acking = True  # acknowledge what arrives (a reader that stalls never gets to)
        self._acked = 0

    def request(
        self, message: sess.Message | Callable[[bytes], sess.Message], timeout: float = 10
    ) -> sess.Message:
        """Handshake, send ``message`` (or what it makes of the handshake hash), return the answer."""
        self.channel.initiate()
        self._flush()
        deadline = time.monotonic() + timeout
        identified = False
        while not self.controls:
            for event in self._receive(deadline):
                if isinstance(event, PeerIdentified) and not identified:
                    identified = True
                    self.channel.accept_peer()
                    sent = message(self.channel.handshake_hash) if callable(message) else message
                    self.channel.send_control(sess.encode(sent))
                    self._flush()
            if self.eof and not self.controls:
                raise ConnectionError("the server closed the connection before answering")
        return self.controls[0]

    def send(self, data: bytes) -> None:
        self.channel.send_data(data)
        self._flush()

    def ping(self) -> None:
        """Keep the keepalive happy (nothing happens once the server has cut us off)."""
        if self.eof:
            return
        self.channel.send_ping()
        try:
            self._flush()
        except (BrokenPipeError, ConnectionResetError):
            self.eof = True

    def read_until_eof(self, timeout: float = 30) -> None:
        """Read (and decrypt) everything until the server closes the TCP connection."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._receive(deadline)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        out = self.channel.data_to_send()
        if out:
            self.sock.sendall(out)

    def _receive(self, deadline: float) -> list[ChannelEvent]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the server in time")
        ready, _, _ = select.select([self.sock], [], [], min(left, 0.5))
        if not ready:
            return []
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return []
        events = self.channel.receive_data(chunk) if not self.closed else []
        for event in events:
            if isinstance(event, ControlReceived):
                self.controls.append(sess.decode(event.message))
            elif isinstance(event, DataReceived):
                self.data += event.data
            elif isinstance(event, Closed):
                self.closed = True
        if self.acking and len(self.data) - self._acked >= 64 * 1024 and not self.closed:
            # As a real client does: the server keeps unacknowledged output and stops at its window.
            self._acked = len(self.data)
            self.channel.send_control(sess.encode(sess.Ack(offset=self._acked)))
            self._flush()
        return events


def write_some(device: DevicePty, data: bytes, wait: float = 0.5) -> int:
    """One non-blocking write of device output (0 if the server has not read the last yet)."""
    _, ready, _ = select.select([], [device.master], [], wait)
    if not ready:
        return 0
    try:
        return os.write(device.master, data)
    except BlockingIOError:
        return 0


def device_output(device: DevicePty, total: int, *, timeout: float = 60, no_iac: bool = False) -> int:
    """Write ``total`` bytes of device output (as fast as the server reads); return what was written.

    ``no_iac`` leaves out 0xFF, so that a telnet stream of it carries every byte once.
    """
    block = (bytes(range(255)) if no_iac else bytes(range(256))) * 256
    written = 0
    deadline = time.monotonic() + timeout
    while written < total and time.monotonic() < deadline:
        written += write_some(device, block[: total - written])
    return written


def new_client(server: Server, *rights: str) -> Identity:
    identity = Identity.generate()
    server.authorize(identity, *rights)
    return identity
