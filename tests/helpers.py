"""Helpers for tests that run meshserial as real processes against real PTYs and sockets."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_tcp_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A child process whose stdout lines can be awaited with a deadline."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        # A Python child that hangs on SIGTERM dumps every thread's stack on SIGABRT (see stop()).
        env = dict(os.environ if env is None else env, PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        self._lines: list[str] = []
        self._err: list[str] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: object, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            with self._cond:
                sink.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 15.0, *, stderr: bool = False) -> re.Match[str]:
        """Wait for a stdout (or stderr) line matching ``pattern`` (regex search)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        lines = self._err if stderr else self._lines
        with self._cond:
            while True:
                for line in lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(lines)
                if self.proc.poll() is not None and all(not t.is_alive() for t in self._threads[:1]):
                    raise AssertionError(
                        f"{self.argv} exited {self.proc.returncode} before printing {pattern!r}\n"
                        f"stdout: {self._lines}\nstderr: {self.stderr}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout} s\nstdout: {self._lines}\n"
                        f"stderr: {self.stderr}"
                    )
                self._cond.wait(min(left, 0.2))

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self._err)

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        self._finish()
        return code

    def _finish(self) -> None:
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM; after ``timeout`` SIGABRT (a stack dump in :attr:`stderr`), then SIGKILL.

        Returns the exit code.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)
                try:
                    self.proc.wait(3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        self._finish()
        return self.proc.returncode


def meshserial(*args: str, env: dict[str, str] | None = None) -> Proc:
    return Proc([sys.executable, "-m", "meshserial", *args], env=env)


def run_meshserial(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshserial", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class DevicePty:
    """A PTY standing in for a serial device: the server opens ``path``; the test holds ``master``."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)

    def baudrate(self) -> int:
        """The rate the server set on the device (speed constant decoded; custom rates via TCGETS2)."""
        attrs = termios.tcgetattr(self.master)
        return speed_to_baud(attrs[5])

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def speed_to_baud(speed: int) -> int:
    for name in dir(termios):
        if name.startswith("B") and name[1:].isdigit() and getattr(termios, name) == speed:
            return int(name[1:])
    raise ValueError(f"unknown speed constant {speed}")


def read_exact(fd: int, n: int, timeout: float = 10.0) -> bytes:
    """Read exactly ``n`` bytes from a non-blocking fd, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    got = 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"read {got} of {n} bytes within {timeout} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            continue
        try:
            chunk = os.read(fd, min(65536, n - got))
        except BlockingIOError:
            continue
        if not chunk:
            raise AssertionError(f"EOF after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes, timeout: float = 10.0) -> None:
    """Write all of ``data`` to a non-blocking fd."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(view)} bytes not written within {timeout} s")
        _, ready, _ = select.select([], [fd], [], min(left, 0.5))
        if not ready:
            continue
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]


class Pump:
    """Moves two blobs through two non-blocking fds in a thread, counting progress, so that a test
    can act (kill a connection, cut a link) in the middle of a transfer."""

    def __init__(
        self,
        fd_a: int,
        fd_b: int,
        a_to_b: bytes,
        b_to_a: bytes,
        *,
        chunk: int = 65536,
        timeout: float = 120.0,
    ) -> None:
        self.result: tuple[bytes, bytes] | None = None
        self.error: BaseException | None = None
        self.progress = 0
        self._fds = (fd_a, fd_b)
        self._out = {fd_a: memoryview(a_to_b), fd_b: memoryview(b_to_a)}
        self._want = {fd_b: len(a_to_b), fd_a: len(b_to_a)}
        self._got: dict[int, bytearray] = {fd_a: bytearray(), fd_b: bytearray()}
        self._chunk = chunk
        self._deadline = time.monotonic() + timeout
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        out, want, got = self._out, self._want, self._got
        fd_a, fd_b = self._fds
        try:
            while any(out.values()) or any(len(got[fd]) < want[fd] for fd in got):
                if time.monotonic() > self._deadline:
                    raise AssertionError(
                        f"transfer incomplete: b got {len(got[fd_b])}/{want[fd_b]}, "
                        f"a got {len(got[fd_a])}/{want[fd_a]}"
                    )
                readers = [fd for fd in got if len(got[fd]) < want[fd]]
                writers = [fd for fd in out if out[fd]]
                r, w, _ = select.select(readers, writers, [], 0.5)
                for fd in r:
                    try:
                        got[fd] += os.read(fd, 65536)
                    except BlockingIOError:
                        pass
                for fd in w:
                    try:
                        n = os.write(fd, out[fd][: self._chunk])
                    except BlockingIOError:
                        continue
                    out[fd] = out[fd][n:]
                self.progress = len(got[fd_a]) + len(got[fd_b])
            self.result = (bytes(got[fd_b]), bytes(got[fd_a]))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 150.0) -> tuple[bytes, bytes]:
        """Wait for the end; return what b received and what a received."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.result is not None, "transfer thread did not finish"
        return self.result


def pump_both(
    fd_a: int, fd_b: int, a_to_b: bytes, b_to_a: bytes, timeout: float = 60.0
) -> tuple[bytes, bytes]:
    """Write ``a_to_b`` into fd_a and ``b_to_a`` into fd_b while reading both ends; return what each
    side received (b's input, a's input). Both fds must be non-blocking."""
    return Pump(fd_a, fd_b, a_to_b, b_to_a, timeout=timeout).join(timeout + 10)


@contextlib.contextmanager
def device_pty() -> Iterator[DevicePty]:
    dev = DevicePty()
    try:
        yield dev
    finally:
        dev.close()


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll a cheap condition (a file appearing) with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def private_home(tmp_path: Path, name: str) -> dict[str, str]:
    """Environment for a meshserial process with its own MESHSERIAL_HOME (one "machine")."""
    home = tmp_path / name
    home.mkdir(mode=0o700)
    env = dict(os.environ)
    env["MESHSERIAL_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ok(*args: str, env: dict[str, str]) -> str:
    """Run a meshserial command that must succeed; return its stdout."""
    result = run_meshserial(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
