"""Helpers shared by the benchmarks: child processes, /proc accounting, PTYs and non-blocking I/O.

Everything is bounded in time: a wait that runs out raises :class:`BenchError` with what was seen.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step failed (timeout, data corruption, a process died)."""


def free_tcp_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_listening(port: int) -> bool:
    """Whether something listens on ``port`` (from /proc/net/tcp*, without connecting: a connection
    would use up the single accept of ``socat TCP-LISTEN`` without ``fork``)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":  # 0A = LISTEN
                return True
    return False


def wait_until(what: str, predicate: object, timeout: float, proc: Proc | None = None) -> None:
    """Poll ``predicate`` every 2 ms until true; fail after ``timeout`` or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: {proc.label} exited with {proc.poll()}\n{proc.output()}")
        if time.monotonic() > deadline:
            extra = f"\n{proc.output()}" if proc is not None else ""
            raise BenchError(f"{what}: not within {timeout:g} s{extra}")
        time.sleep(0.002)


class Proc:
    """A child process; stdout/stderr lines are collected by threads so a line can be awaited."""

    def __init__(self, label: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.label = label
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self._out: list[str] = []
        self._err: list[str] = []
        self._cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
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

    def poll(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        with self._cond:
            return (
                f"[{self.label} stdout] "
                + "\n".join(self._out)
                + f"\n[{self.label} stderr] "
                + ("\n".join(self._err))
            )

    def stderr_lines(self) -> list[str]:
        with self._cond:
            return list(self._err)

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for a stdout line matching ``pattern``; fail on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._out[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self._out)
                if self.proc.poll() is not None and not self._threads[0].is_alive():
                    raise BenchError(
                        f"{self.label} exited {self.proc.returncode} before printing {pattern!r}\n"
                        + self.output()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{self.label}: no line {pattern!r} within {timeout:g} s\n{self.output()}"
                    )
                self._cond.wait(min(left, 0.05))

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far (children not included)."""
        return cpu_seconds(self.pid)

    def sched_cpu_seconds(self) -> float:
        """Time on a CPU of all threads so far, at nanosecond resolution (see :func:`sched_cpu_seconds`)."""
        return sched_cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM this process (by PID), SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


def cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/PID/stat, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is the state
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def sched_cpu_seconds(pid: int) -> float:
    """Time on a CPU of all the process's threads so far, from ``/proc/PID/task/*/schedstat`` (the
    scheduler's nanosecond clock), or NaN where the kernel does not keep it.

    ``utime + stime`` of :func:`cpu_seconds` come in clock ticks (10 ms with ``CLK_TCK`` 100): fine for
    a second of CPU, coarse for the few tens of milliseconds an idle-ish process spends. Threads that
    ended before the call are not counted (none of the programs measured end threads mid-run).
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return math.nan
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:  # the thread ended in the meantime
            continue
        except (OSError, ValueError, IndexError):
            return math.nan
    return total / 1e9


def rss_kib(pid: int) -> int:
    """VmRSS from /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class DevicePty:
    """A PTY pair standing in for a serial device: the server opens ``path`` (the slave); the
    benchmark reads and writes ``master``. The benchmark keeps its own slave fd open, so the master
    never sees a hang-up while a server opens or closes the device, and the raw termios stay put."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self.master, False)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def drain(fd: int, settle: float = 0.05, limit: float = 2.0) -> int:
    """Read and discard whatever arrives on ``fd`` until it has been quiet for ``settle`` seconds."""
    deadline = time.monotonic() + limit
    dropped = 0
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while time.monotonic() < deadline:
        if not poller.poll(int(settle * 1000)):
            break
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not chunk:
            break
        dropped += len(chunk)
    return dropped


def read_exact(fd: int, n: int, timeout: float) -> bytes:
    """Exactly ``n`` bytes from a non-blocking fd, waiting in poll (not sleeping)."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"read {len(buf)} of {n} bytes within {timeout:g} s")
        if not poller.poll(max(1, int(left * 1000))):
            continue
        try:
            chunk = os.read(fd, n - len(buf))
        except BlockingIOError:
            continue
        if not chunk:
            raise BenchError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def write_all(fd: int, data: bytes, timeout: float) -> None:
    """All of ``data`` into a non-blocking fd."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    poller: select.poll | None = None
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        if poller is None:
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError(f"{len(view)} bytes of {len(data)} not written within {timeout:g} s")
        poller.poll(max(1, int(left * 1000)))
