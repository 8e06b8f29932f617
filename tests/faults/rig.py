"""The fault-test rig: a server and a client namespace, meshserial processes, and data movers.

Topology (addresses from 198.18.0.0/15 only)::

    client ns (eth0 198.18.50.2) ── p2 ┐                ┌ p1 ── server ns (eth0 198.18.50.1)
                                        └ wire ns: br0 ──┘

or, with ``tun=TunLink(...)``, a userspace link made of two TUN devices (tests/tunlink.py) with delay and
loss: client ns (tun0 198.18.60.2) ⟷ tunlink process ⟷ server ns (tun0 198.18.60.1).

Cutting "the cable" is ``ip -n WIRE link set p1 down``: neither end's stack is told anything (no RST,
no route change), exactly like a dead path in the middle. Device and application PTYs live in the root
namespace; their paths work in the others because the mount namespace is shared.

Shared by tests/faults and benchmarks/resume.py. Every process is started here and stopped by PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.netns import Bridge, Netns, netns_unavailable

ROOT = Path(__file__).resolve().parents[2]
PORT = 7217
VETH_SERVER = "198.18.50.1"
VETH_CLIENT = "198.18.50.2"
TUN_SERVER = "198.18.60.1"
TUN_CLIENT = "198.18.60.2"


def faults_unavailable(*, tun: bool = False) -> str | None:
    """Why the fault tests cannot run here, or None."""
    reason = netns_unavailable()
    if reason is not None:
        return reason
    if shutil.which("ss") is None:
        return "needs ss (iproute2) to kill connections"
    if tun and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return "needs /dev/net/tun for the delay/loss link"
    return None


class RigError(AssertionError):
    """A step of a fault scenario failed; the message carries the processes' output."""


# ---- processes with timestamped output lines -------------------------------------------------------


class LineProc:
    """A child process whose stdout/stderr lines are kept with the time they arrived."""

    def __init__(
        self, label: str, argv: Sequence[str], *, env: dict[str, str] | None = None, stdin: int | None = None
    ) -> None:
        self.label = label
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            env=env,
            cwd=ROOT,
        )
        self.pid = self.proc.pid
        self.lines: list[tuple[float, str, str]] = []  # (monotonic time, "out" | "err", line)
        self._cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, "out"), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, "err"), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: object, kind: str) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            now = time.monotonic()
            with self._cond:
                self.lines.append((now, kind, raw.decode(errors="replace").rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def output(self) -> str:
        """Everything printed so far, for assertion messages."""
        with self._cond:
            return self._output()

    def stderr_text(self) -> str:
        with self._cond:
            return "\n".join(line for _, kind, line in self.lines if kind == "err")

    def find(self, pattern: str, *, after: float = 0.0) -> tuple[float, re.Match[str]] | None:
        """The first line (either stream) at or after ``after`` matching ``pattern``."""
        regex = re.compile(pattern)
        with self._cond:
            for when, _, line in self.lines:
                if when >= after and (m := regex.search(line)):
                    return when, m
        return None

    def wait_line(self, pattern: str, timeout: float, *, after: float = 0.0) -> tuple[float, re.Match[str]]:
        """Wait for a line (stdout or stderr) matching ``pattern`` that arrived at or after ``after``;
        returns when it arrived and the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for when, _, line in self.lines[seen:]:
                    if when >= after and (m := regex.search(line)):
                        return when, m
                seen = len(self.lines)
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise RigError(f"{self.label} exited before printing {pattern!r}\n{self._output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RigError(
                        f"{self.label}: no line {pattern!r} within {timeout:g} s\n{self._output()}"
                    )
                self._cond.wait(min(left, 0.1))

    def _output(self) -> str:
        body = "\n".join(f"  {kind}: {line}" for _, kind, line in self.lines)
        return f"[{self.label} pid {self.pid}, exit {self.proc.poll()}]\n{body}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID (a crash)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM by PID, SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        for thread in self._threads:
            thread.join(2)
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream is not None:
                stream.close()
        return self.proc.returncode


# ---- PTYs -------------------------------------------------------------------------------------------


TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431


class PtyHost:
    """A private devpts instance (``mount -t devpts -o newinstance``) for device PTYs.

    With the shared /dev/pts, a freshly created pair often gets the number of one that just went away,
    and any other ``share`` on the machine still following that old /dev/pts/N (another test run, say)
    would open and lock our new device. A private instance has its own numbering and paths."""

    def __init__(self, where: Path) -> None:
        self.dir = where
        where.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", str(where)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        self.mounted = result.returncode == 0

    def openpty(self) -> tuple[int, int, str]:
        """(master, slave, slave path) from this instance, or from /dev/ptmx when the mount failed."""
        if not self.mounted:
            master, slave = os.openpty()
            return master, slave, os.ttyname(slave)
        master = os.open(self.dir / "ptmx", os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
            number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
            path = str(self.dir / str(number))
            slave = os.open(path, os.O_RDWR | os.O_NOCTTY)
        except OSError:
            os.close(master)
            raise
        return master, slave, path

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True, timeout=10, check=False)
            self.mounted = False


class Device:
    """A PTY pair standing in for a serial device; the test reads and writes ``master``.

    Our slave fd stays open so the master never sees a hang-up while the server closes and reopens."""

    def __init__(self, host: PtyHost | None = None) -> None:
        if host is not None:
            self.master, self._slave, self.path = host.openpty()
        else:
            self.master, self._slave = os.openpty()
            self.path = os.ttyname(self._slave)
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self._slave = -1


def repoint(link: Path, target: str) -> None:
    """Atomically make the symlink ``link`` point at ``target`` (temporary link renamed over it)."""
    tmp = link.with_name(f".{link.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def open_app(link: Path) -> int:
    """Open the client's PTY as an application would (raw, non-blocking)."""
    fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    # TCSANOW: a flush (TCSAFLUSH) would be forwarded as a purge and race with the data that follows.
    tty.setraw(fd, termios.TCSANOW)
    return fd


# ---- the rig ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TunLink:
    """Parameters of the userspace link: one-way delay (each way) and loss probability (each way)."""

    delay: float
    loss: float
    seed: int | None = None


class Rig:
    """Two hosts, a server and a client home, and the processes of one scenario."""

    def __init__(self, net: Netns, workdir: Path, *, tun: TunLink | None = None) -> None:
        self.net = net
        self.workdir = workdir
        self.procs: list[LineProc] = []
        self.wire: Bridge | None = None
        self.tunlink: LineProc | None = None
        try:
            self._build(tun)
        except BaseException:
            self.close()
            raise

    def _build(self, tun: TunLink | None) -> None:
        net = self.net
        self.server_ns = net.host("srv")
        self.client_ns = net.host("cli")
        if tun is None:
            self.wire = net.bridge("wire")
            net.attach(self.server_ns, self.wire, ifname="eth0", address=f"{VETH_SERVER}/24")  # port p1
            net.attach(self.client_ns, self.wire, ifname="eth0", address=f"{VETH_CLIENT}/24")  # port p2
            self.server_ip = VETH_SERVER
        else:
            extra = ["--seed", str(tun.seed)] if tun.seed is not None else []
            self.tunlink = self.spawn(
                "tunlink",
                [sys.executable, "-m", "tests.tunlink", self.server_ns, TUN_SERVER, self.client_ns,
                 TUN_CLIENT, "--delay", str(tun.delay), "--loss", str(tun.loss), "--lifetime", "300",
                 *extra],
                stdin=subprocess.PIPE,  # it also ends when we (and so this pipe) go away
            )  # fmt: skip
            self.tunlink.wait_line(r"^ready$", 15)
            self.server_ip = TUN_SERVER
        self.server_env = self._home("server")
        self.client_env = self._home("client")
        self._meshserial_ok("keygen", env=self.server_env)
        client_id = self._meshserial_ok("keygen", env=self.client_env)
        self._meshserial_ok("authorize", client_id, env=self.server_env)

    # -- homes and processes ----------------------------------------------------------------------

    def _home(self, name: str) -> dict[str, str]:
        home = self.workdir / name
        home.mkdir(mode=0o700)
        env = dict(os.environ)
        env["MESHSERIAL_HOME"] = str(home)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _meshserial_ok(self, *args: str, env: dict[str, str]) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "meshserial", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RigError(f"meshserial {' '.join(args)} failed: {result.stderr}")
        return result.stdout.strip()

    def spawn(
        self,
        label: str,
        argv: Sequence[str],
        *,
        ns: str | None = None,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
    ) -> LineProc:
        """Start ``argv`` (in ``ns`` via ``ip netns exec``, which execs: the PID is the program's)."""
        full = ["ip", "netns", "exec", ns, *argv] if ns is not None else list(argv)
        proc = LineProc(label, full, env=env, stdin=stdin)
        self.procs.append(proc)
        return proc

    def share(self, device: str, *extra: str, name: str = "gps", ready: float = 20.0) -> LineProc:
        """``meshserial share DEVICE=gps --listen SERVER:7217 -v`` in the server namespace."""
        proc = self.spawn(
            "share",
            [sys.executable, "-m", "meshserial", "share", f"{device}={name}", "--listen",
             f"{self.server_ip}:{PORT}", "-v", *extra],
            ns=self.server_ns,
            env=self.server_env,
        )  # fmt: skip
        proc.wait_line(rf"sharing {name} on", ready)
        return proc

    def use(self, link: Path, *extra: str, name: str = "gps", ready: float = 30.0) -> LineProc:
        """``meshserial use gps@SERVER:7217 --pty --link LINK --trust-new -v`` in the client namespace."""
        proc = self.spawn(
            "use",
            [sys.executable, "-m", "meshserial", "use", f"{name}@{self.server_ip}:{PORT}", "--pty",
             "--link", str(link), "--trust-new", "-v", *extra],
            ns=self.client_ns,
            env=self.client_env,
        )  # fmt: skip
        proc.wait_line(r"/dev/pts/\d+", ready)
        return proc

    def output(self) -> str:
        """All processes' output, for assertion messages."""
        return "\n".join(proc.output() for proc in self.procs)

    # -- faults -----------------------------------------------------------------------------------

    def kill_connections(self) -> float:
        """Reset the client's TCP connection(s) to the server (``ss -K``: RST at both ends); returns the
        time just before the command ran (the kill happens while it runs)."""
        when = time.monotonic()
        result = self.net.run(
            self.client_ns, ["ss", "-K", "dst", self.server_ip, "dport", "=", str(PORT)], check=False
        )
        if result.returncode != 0:
            raise RigError(f"ss -K failed: {result.stderr}")
        return when

    def tcp_rtt(self) -> float | None:
        """The kernel's smoothed RTT (seconds) of the client's connection to the server, if any."""
        result = self.net.run(
            self.client_ns, ["ss", "-tin", "dst", self.server_ip, "dport", "=", str(PORT)], check=False
        )
        m = re.search(r"\brtt:([\d.]+)/", result.stdout)
        return float(m.group(1)) / 1000 if m else None

    def stop_tunlink(self) -> dict[str, tuple[int, int]]:
        """Stop the delay/loss link; returns {"A->B" | "B->A": (forwarded, lost)} (A is the server)."""
        assert self.tunlink is not None
        self.tunlink.stop()
        found = self.tunlink.find(r"tunlink seed=")
        if found is None:
            raise RigError(f"no statistics from the link\n{self.tunlink.output()}")
        line = found[1].string
        return {
            m.group(1): (int(m.group(2)), int(m.group(3)))
            for m in re.finditer(r"(A->B|B->A): (\d+) forwarded, (\d+) lost", line)
        }

    def _wire_port(self, up: bool) -> None:
        assert self.wire is not None, "the TUN topology has no wire to cut"
        self.net.run(self.wire.ns, ["ip", "link", "set", "p1", "up" if up else "down"])

    def cut(self) -> float:
        """Unplug the server's cable at the switch (no RST, no route change at either end); returns the
        time just before the command (so delays measured from it are, if anything, too long)."""
        when = time.monotonic()
        self._wire_port(False)
        return when

    def restore(self) -> float:
        """Plug the cable back in; returns the time just after the command (the link is up by then)."""
        self._wire_port(True)
        return time.monotonic()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=3)
        self.procs.clear()


# ---- data movers ------------------------------------------------------------------------------------


class _Mover:
    """A thread moving bytes between the application fd and the device fd; errors end it."""

    def __init__(self, app: int, device: int) -> None:
        self.app = app
        self.device = device
        self.error: BaseException | None = None
        self.app_closed: str | None = None  # set if the application's PTY reported EOF/EIO
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by join()
            self.error = exc

    def run(self) -> None:
        raise NotImplementedError

    def _read(self, fd: int) -> bytes:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if fd == self.app:
                self.app_closed = f"read failed: {exc}"
            raise
        if not data:
            if fd == self.app:
                self.app_closed = "EOF"
            raise RigError(f"EOF on {'application' if fd == self.app else 'device'} fd")
        return data

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def alive(self) -> bool:
        return self._thread.is_alive()


class Pump(_Mover):
    """Bulk transfer both ways at once (``up``: application → device, ``down``: device → application),
    optionally paced to ``rate`` bytes/s per direction so that a fault can land mid-transfer."""

    def __init__(
        self, app: int, device: int, up: bytes, down: bytes, *, rate: float = 0.0, timeout: float = 120
    ) -> None:
        super().__init__(app, device)
        self.up, self.down = up, down
        self.rate = rate
        self.timeout = timeout
        self.got = {app: bytearray(), device: bytearray()}
        self.sent = {app: 0, device: 0}
        self.started = time.monotonic()
        self.start()

    @property
    def progress(self) -> float:
        """Fraction of both transfers received so far."""
        total = len(self.up) + len(self.down)
        return (len(self.got[self.app]) + len(self.got[self.device])) / total if total else 1.0

    def run(self) -> None:
        app, dev = self.app, self.device
        out = {app: memoryview(self.up), dev: memoryview(self.down)}
        want = {dev: len(self.up), app: len(self.down)}
        deadline = self.started + self.timeout
        while any(out[fd] for fd in out) or any(len(self.got[fd]) < want[fd] for fd in want):
            if self._stop.is_set():
                return
            now = time.monotonic()
            if now > deadline:
                raise RigError(
                    f"transfer incomplete after {self.timeout:g} s: device got {len(self.got[dev])}/"
                    f"{want[dev]}, application got {len(self.got[app])}/{want[app]}"
                )
            allowed = (now - self.started) * self.rate if self.rate else float("inf")
            readers = [fd for fd in want if len(self.got[fd]) < want[fd]]
            writers = [fd for fd in out if out[fd] and self.sent[fd] < allowed]
            r, w, _ = select.select(readers, writers, [], 0.05)
            for fd in r:
                self.got[fd] += self._read(fd)
            for fd in w:
                budget = int(min(4096, allowed - self.sent[fd]))
                try:
                    n = os.write(fd, out[fd][: max(1, budget)])
                except BlockingIOError:
                    continue
                out[fd] = out[fd][n:]
                self.sent[fd] += n

    def join(self, timeout: float) -> tuple[bytes, bytes]:
        """Wait for the end; returns (what the device got, what the application got)."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise RigError(f"transfer still running after {timeout:g} s")
        return bytes(self.got[self.device]), bytes(self.got[self.app])


RECORD = 8  # b"<nnnnnn>"
_RECORD_RE = re.compile(rb"<(\d{6})>")


def record(seq: int) -> bytes:
    return b"<%06d>" % (seq % 1_000_000)


class Trickle(_Mover):
    """A steady stream of numbered 8-byte records both ways, one per ``interval`` per direction, with
    the time of every write and every read, to see when data stops and starts flowing and what was lost.

    Directions are ``"up"`` (application → device) and ``"down"`` (device → application). The device fd
    can be unplugged and replaced while the stream runs (:meth:`set_device`)."""

    def __init__(self, app: int, device: int, *, interval: float = 0.005) -> None:
        super().__init__(app, device)
        self.interval = interval
        self.sent = {"up": bytearray(), "down": bytearray()}
        self.got = {"up": bytearray(), "down": bytearray()}
        self.write_log: dict[str, list[tuple[float, int]]] = {"up": [], "down": []}  # (time, total sent)
        self.read_log: dict[str, list[tuple[float, int]]] = {"up": [], "down": []}  # (time, total got)
        self._lock = threading.Lock()
        self._device: int | None = device
        self._pending = {"up": bytearray(), "down": bytearray()}
        self._writing = True
        self._fresh = False
        self._loops = 0
        self.start()

    def set_device(self, fd: int | None) -> None:
        """Unplug the device (None: nothing written to or read from it) or plug in a new one; returns
        once the mover has stopped using the old fd (it may be closed then)."""
        with self._lock:
            self._device = fd
            self._fresh = True  # the mover drops what it had pending for the old device
            seen = self._loops
        self.wait("the mover to notice the device change", lambda: self._loops >= seen + 2, 5)

    def _fds(self) -> list[tuple[str, int]]:
        """(direction written by this fd, fd) for the fds in use."""
        with self._lock:
            device = self._device
            if self._fresh:
                self._fresh = False
                self._pending["down"].clear()
        return [("up", self.app)] + ([("down", device)] if device is not None else [])

    def run(self) -> None:
        seq = 0
        next_write = time.monotonic()
        while not self._stop.is_set():
            self._loops += 1
            now = time.monotonic()
            fds = self._fds()
            if now >= next_write and self._writing:
                for direction, _ in fds:
                    self._pending[direction] += record(seq)
                seq += 1
                next_write += self.interval
                if next_write < now:  # fell behind (a slow machine): do not burst to catch up
                    next_write = now + self.interval
            for direction, fd in fds:
                pending = self._pending[direction]
                if pending:
                    try:
                        n = os.write(fd, pending)
                    except BlockingIOError:
                        n = 0
                    if n:
                        with self._lock:
                            self.sent[direction] += pending[:n]
                            self.write_log[direction].append((time.monotonic(), len(self.sent[direction])))
                        del pending[:n]
            wait = max(0.0, next_write - time.monotonic()) if self._writing else 0.05
            self._read_some([fd for _, fd in fds], wait)

    def _read_some(self, fds: list[int], wait: float) -> None:
        r, _, _ = select.select(fds, [], [], wait)
        for fd in r:
            data = self._read(fd)
            if data:
                direction = "down" if fd == self.app else "up"
                with self._lock:
                    self.got[direction] += data
                    self.read_log[direction].append((time.monotonic(), len(self.got[direction])))

    # -- analysis ----------------------------------------------------------------------------------

    def sent_before(self, direction: str, when: float) -> int:
        """Bytes written in ``direction`` before ``when``."""
        with self._lock:
            total = 0
            for t, n in self.write_log[direction]:
                if t > when:
                    break
                total = n
            return total

    def first_arrival_after(self, direction: str, when: float) -> float | None:
        """When something first arrived in ``direction`` after ``when``."""
        with self._lock:
            return next((t for t, _ in self.read_log[direction] if t > when), None)

    def first_new_arrival(self, direction: str, when: float) -> float | None:
        """When the first record written in ``direction`` after ``when`` (or a later one) arrived."""
        with self._lock:
            sent, got = bytes(self.sent[direction]), bytes(self.got[direction])
            writes, reads = list(self.write_log[direction]), list(self.read_log[direction])
        offset = next((n for t, n in reversed(writes) if t <= when), 0)
        first = _RECORD_RE.search(sent, offset)
        if first is None:
            return None
        wanted = int(first.group(1))
        for m in _RECORD_RE.finditer(got):
            if int(m.group(1)) >= wanted:
                return next((t for t, n in reads if n >= m.end()), None)
        return None

    def wait_new_arrival(self, direction: str, when: float, timeout: float) -> float:
        """Wait until data written in ``direction`` after ``when`` arrives; returns when it did."""
        found: list[float] = []

        def arrived() -> bool:
            t = self.first_new_arrival(direction, when)
            if t is not None:
                found.append(t)
            return t is not None

        self.wait(f"{direction} data written after the event", arrived, timeout)
        return found[0]

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.error is not None:
                raise RigError(f"{what}: the data mover failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise RigError(f"{what}: not within {timeout:g} s")
            time.sleep(0.005)

    def wait_arrival_after(self, direction: str, when: float, timeout: float) -> float:
        self.wait(
            f"{direction} data after t={when:.3f}",
            lambda: self.first_arrival_after(direction, when) is not None,
            timeout,
        )
        arrival = self.first_arrival_after(direction, when)
        assert arrival is not None
        return arrival

    def _tail_arrived(self, direction: str) -> bool:
        """The last bytes written in ``direction`` have arrived (so, in order, everything that will)."""
        with self._lock:
            sent, got = self.sent[direction], self.got[direction]
            return not sent or got.endswith(sent[-RECORD:])

    def drain(self, timeout: float) -> None:
        """Stop writing, then wait until the last bytes written have arrived (or ``timeout`` passes)."""
        self._writing = False
        deadline = time.monotonic() + timeout
        while any(self._pending.values()) or not all(self._tail_arrived(d) for d in ("up", "down")):
            if self.error is not None or not self.alive() or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self.stop()
        if self.error is not None:
            raise RigError(f"the data mover failed: {self.error!r}")

    def loss(self, direction: str, *, since: int = 0) -> Loss:
        """What arrived in ``direction`` compared with what was sent from byte ``since`` on (what
        arrived must end with exactly those bytes)."""
        with self._lock:
            sent, got = bytes(self.sent[direction]), bytes(self.got[direction])
        return Loss.compare(sent, got, since=since)


@dataclass(frozen=True)
class Loss:
    """How a received record stream compares with what was sent."""

    sent: int
    received: int
    lost: int  # bytes sent that never arrived (sent - received, counting duplicates as not lost)
    intact: bool  # received == sent exactly
    in_order: bool  # complete records appear in increasing order without duplicates
    torn: int  # bytes that are not part of a complete record (a record cut by the failure)

    tail_intact: bool  # the received stream ends with everything sent from ``since`` on

    @classmethod
    def compare(cls, sent: bytes, received: bytes, *, since: int = 0) -> Loss:
        records = [int(m.group(1)) for m in _RECORD_RE.finditer(received)]
        in_order = all(b > a for a, b in itertools.pairwise(records))
        torn = len(received) - RECORD * len(records)
        return cls(
            sent=len(sent),
            received=len(received),
            lost=max(0, len(sent) - len(received)),
            intact=sent == received,
            in_order=in_order,
            torn=torn,
            tail_intact=received.endswith(sent[since:]),
        )

    def describe(self) -> str:
        return (
            f"sent {self.sent}, received {self.received}, lost {self.lost}, torn {self.torn}, "
            f"{'intact' if self.intact else 'not intact'}, {'in order' if self.in_order else 'OUT OF ORDER'}"
        )
