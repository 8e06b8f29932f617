"""What a client or a stranger can make the server hold stays bounded."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from meshserial.proto import session as sess
from tests.hostile.peer import FLOW_SUSPEND, WILL_COM_PORT, RawClient, Server, device_output, new_client

pytestmark = pytest.mark.system

MiB = 1024 * 1024


def _flood_device(server: Server, total: int, client: RawClient) -> int:
    """Device output in 1 MiB steps; the client pings in between (it answers keepalives, reads nothing)."""
    written = 0
    while written < total:
        written += device_output(server.device, min(MiB, total - written), timeout=10)
        client.ping()
        if "dropping watcher" in server.proc.stderr:
            break
    return written


def test_a_watcher_that_stops_reading_is_dropped_and_told(server: Server) -> None:
    watcher = new_client(server, "--ports", "*=ro", "--name", "stalled")
    with RawClient(server.port, watcher) as client:
        accept = client.request(sess.Hello(port="gps", mode="ro"))
        assert isinstance(accept, sess.Accept)
        before = server.rss()
        _flood_device(server, 64 * MiB, client)
        server.proc.wait_line(r"dropping watcher stalled", stderr=True, timeout=20)
        grown = server.rss() - before
        assert grown < 24 * MiB, f"the server grew by {grown / MiB:.1f} MiB for one stalled watcher"
    # Whatever it missed, the client learns why when it tries to resume.
    with RawClient(server.port, watcher) as again:
        answer = again.request(sess.Hello(port="gps", mode="ro", session=accept.session, rx=0))
        assert isinstance(answer, sess.Deny) and "watcher too slow" in answer.reason, answer


def _reader(client: RawClient, want: int, stop: threading.Event) -> None:
    deadline = time.monotonic() + 60
    while len(client.data) < want and not stop.is_set() and time.monotonic() < deadline:
        client._receive(deadline)


def test_suspend_from_a_watcher_holds_back_only_that_watcher(server: Server) -> None:
    writer = new_client(server, "--name", "writer")
    watcher = new_client(server, "--ports", "*=ro", "--name", "suspender")
    total = 24 * MiB
    with RawClient(server.port, writer) as holder, RawClient(server.port, watcher) as suspender:
        assert isinstance(holder.request(sess.Hello(port="gps")), sess.Accept)
        assert isinstance(suspender.request(sess.Hello(port="gps", mode="ro")), sess.Accept)
        suspender.send(WILL_COM_PORT + FLOW_SUSPEND)
        stop = threading.Event()
        reading = threading.Thread(target=_reader, args=(holder, total, stop))
        reading.start()
        try:
            # Without 0xFF, the holder's telnet stream is the data plus a few negotiation bytes.
            written = 0
            while written < total:
                written += device_output(server.device, min(MiB, total - written), timeout=10, no_iac=True)
                suspender.ping()
            server.proc.wait_line(r"dropping watcher suspender", stderr=True, timeout=20)
            reading.join(60)
        finally:
            stop.set()
            reading.join(5)
        # The holder got everything: the watcher's suspend never paused the device.
        assert len(holder.data) >= total, (len(holder.data), total)


def _malformed_burst(port: int, count: int) -> None:
    """``count`` connections from 32 loopback sources, each sending an impossible frame length."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + i % 32}", 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
            sock.sendall(struct.pack(">H", 40 + i % 1000) + b"\x00" * 40)
            socks.append(sock)
        for sock in socks:
            try:
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
    finally:
        for sock in socks:
            sock.close()


def test_failed_connections_free_their_memory_at_once(server: Server) -> None:
    started = time.monotonic()
    _malformed_burst(server.port, 100)  # warm up: first-use allocations are not a leak
    before = server.rss()
    for _ in range(10):
        _malformed_burst(server.port, 500)
    grown = server.rss() - before
    assert grown < 10 * MiB, f"grew by {grown / MiB:.1f} MiB after 10 bursts of 500 malformed connections"
    # The log grows with time, not with the attack: at most 40 lines per 10 s window (first lines and
    # per-source summaries), however many connections fail.
    windows = int((time.monotonic() - started) // 10) + 1
    lines = [line for line in server.proc.stderr.splitlines() if "127.0.0." in line]
    assert len(lines) <= 41 * windows, (
        f"{len(lines)} log lines in {windows} windows for 5 100 bad connections"
    )
