"""End-to-end latency, throughput, CPU and memory through PTYs: meshserial against socat and ser2net.

Run from the repository root: ``python -m benchmarks.e2e [--iterations N] [--mib M] [--paced] [--json FILE]``.

Every configuration is measured the same way. A "device" PTY pair is held by the benchmark: the server
under test opens its slave path as the serial device, the benchmark reads and writes its master. The
"application" side is the client's PTY link, which the benchmark opens raw and non-blocking. All
traffic stays on loopback. ``--paced`` adds the CPU each process spends per MB at a serial-like pace
(100 KB/s each way in 128-byte and in 2 KiB writes). meshserial runs asyncio's own loop, and uvloop's in
the configurations named "(uvloop)" when uvloop is installed. See ``benchmarks/README.md`` for what each
number means. No assertions
about performance: this is a measurement; it aborts only on errors (timeouts, corrupted data).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._procs import (
    BenchError,
    DevicePty,
    Proc,
    drain,
    free_tcp_port,
    read_exact,
    tcp_listening,
    wait_until,
    write_all,
)

MB = 1_000_000  # throughput and CPU figures use decimal megabytes
CHUNK = 65536
START_TIMEOUT = 20.0  # a server or client must be ready within this
STEP_TIMEOUT = 5.0  # one round trip
PAYLOAD_SIZES = (1, 64)
PACED_SIZES = (128, 2048)  # bytes per write in the paced steps
PACED_KBPS = 100.0  # per direction, KB = 1000 bytes
PACED_DRAIN = 10.0  # after the last paced write, the rest must arrive within this
STDERR_LINES = 20
PTS_LINE = r"^(/dev/pts/\d+)\s+\(link: "
SOCAT = shutil.which("socat")
SER2NET = shutil.which("ser2net") or ("/usr/sbin/ser2net" if os.path.exists("/usr/sbin/ser2net") else None)
# The children run this interpreter, so uvloop is importable for them when it is here.
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


class StartError(BenchError):
    """A configuration did not come up (a process failed or was not ready in time): the others still run."""


# ---- configurations ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Ctx:
    """Per-configuration scratch state."""

    device: DevicePty
    port: int
    tmp: Path
    link: Path
    server_env: dict[str, str]
    client_env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Config:
    key: str
    server_label: str
    client_label: str
    missing: str | None  # why it cannot run here, or None
    start_server: Callable[[Ctx], Proc]
    client_argv: Callable[[Ctx], list[str]]
    client_ready_line: str | None  # a stdout line announcing readiness, else wait for the link
    notes: str
    # MESHSERIAL_LOOP for both processes: set even where meshserial is only the client, and to asyncio
    # by default, so that an installed uvloop does not silently change what the plain names measure.
    loop: str = "asyncio"
    # Run the meshserial package found in this directory instead of this checkout's (--baseline).
    code: str | None = None


def _meshserial(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshserial", *args]


def _socat_server(ctx: Ctx) -> Proc:
    assert SOCAT is not None
    proc = Proc(
        "socat server",
        [
            SOCAT,
            f"TCP-LISTEN:{ctx.port},bind=127.0.0.1,reuseaddr,nodelay",
            f"FILE:{ctx.device.path},raw,echo=0",
        ],
    )
    wait_until("socat listening", lambda: tcp_listening(ctx.port), START_TIMEOUT, proc)
    return proc


def _socat_client(ctx: Ctx) -> list[str]:
    assert SOCAT is not None
    return [SOCAT, f"PTY,link={ctx.link},raw,echo=0", f"TCP:127.0.0.1:{ctx.port},nodelay"]


def _ser2net_server(ctx: Ctx) -> Proc:
    assert SER2NET is not None
    config = ctx.tmp / "ser2net.yaml"
    config.write_text(
        "connection: &bench\n"
        f"  accepter: telnet(rfc2217),tcp(nodelay=true),127.0.0.1,{ctx.port}\n"
        f"  connector: serialdev,{ctx.device.path},9600n81,local,nobreak\n"
        "  options:\n"
        "    chardelay: false\n"
        "    kickolduser: true\n"
    )
    proc = Proc("ser2net", [SER2NET, "-n", "-d", "-c", str(config)])
    wait_until("ser2net listening", lambda: tcp_listening(ctx.port), START_TIMEOUT, proc)
    return proc


def _meshserial_rfc2217_client(ctx: Ctx) -> list[str]:
    return _meshserial("use", f"rfc2217://127.0.0.1:{ctx.port}", "--pty", "--link", str(ctx.link))


def _meshserial_plain_server(ctx: Ctx) -> Proc:
    proc = Proc(
        "meshserial share",
        _meshserial("share", f"{ctx.device.path}=dev", "--rfc2217", f"127.0.0.1:{ctx.port}"),
        env=ctx.server_env,
    )
    proc.wait_line(r"sharing dev on ", START_TIMEOUT)
    return proc


def _run_checked(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=60, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise BenchError(f"{argv} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _meshserial_secure_server(ctx: Ctx) -> Proc:
    _run_checked(_meshserial("keygen"), ctx.server_env)
    client_id = _run_checked(_meshserial("keygen"), ctx.client_env).strip().splitlines()[-1]
    _run_checked(_meshserial("authorize", client_id, "--name", "bench"), ctx.server_env)
    proc = Proc(
        "meshserial share",
        _meshserial("share", f"{ctx.device.path}=dev", "--listen", f"127.0.0.1:{ctx.port}"),
        env=ctx.server_env,
    )
    proc.wait_line(r"sharing dev on ", START_TIMEOUT)
    return proc


def _meshserial_secure_client(ctx: Ctx) -> list[str]:
    return _meshserial("use", f"dev@127.0.0.1:{ctx.port}", "--pty", "--link", str(ctx.link), "--trust-new")


def _configs(baseline: Path | None = None) -> list[Config]:
    no_socat = None if SOCAT else "socat is not installed (apt-get install socat)"
    no_ser2net = None if SER2NET else "ser2net is not installed (apt-get install ser2net)"
    configs = _base_configs(no_socat, no_ser2net)
    if baseline is not None:
        # The same configurations run from another checkout (an earlier commit), interleaved with these
        # ones, so that a change is measured against what it changed in one run on one machine.
        missing = (
            None if (baseline / "meshserial" / "__init__.py").exists() else f"no meshserial in {baseline}"
        )
        for base in [c for c in configs if c.key.startswith("meshserial ")]:
            configs.append(
                dataclasses.replace(
                    base,
                    key=f"{base.key} (baseline)",
                    missing=missing,
                    code=str(baseline),
                    notes=f"{base.notes}; the code of {baseline}",
                )
            )
    no_uvloop = None if HAVE_UVLOOP else "uvloop is not installed (pip install 'meshserial[fast]')"
    for base in [c for c in configs if c.key.startswith("meshserial ")]:
        configs.append(
            dataclasses.replace(
                base,
                key=f"{base.key} (uvloop)",
                missing=no_uvloop,
                loop="uvloop",
                notes=f"{base.notes}; MESHSERIAL_LOOP=uvloop for both",
            )
        )
    return configs


def _base_configs(no_socat: str | None, no_ser2net: str | None) -> list[Config]:
    return [
        Config(
            "socat+socat",
            "socat",
            "socat",
            no_socat,
            _socat_server,
            _socat_client,
            None,
            "TCP-LISTEN:P,bind=127.0.0.1,reuseaddr,nodelay FILE:DEV,raw,echo=0 | "
            "PTY,link=L,raw,echo=0 TCP:127.0.0.1:P,nodelay (no RFC 2217: raw bytes)",
        ),
        Config(
            "ser2net+meshserial",
            "ser2net",
            "meshserial use",
            no_ser2net,
            _ser2net_server,
            _meshserial_rfc2217_client,
            PTS_LINE,
            "ser2net: telnet(rfc2217),tcp(nodelay=true); options chardelay: false | "
            "meshserial use rfc2217://… --pty",
        ),
        Config(
            "meshserial plain",
            "meshserial share",
            "meshserial use",
            None,
            _meshserial_plain_server,
            _meshserial_rfc2217_client,
            PTS_LINE,
            "share DEV=dev --rfc2217 127.0.0.1:P | use rfc2217://127.0.0.1:P --pty",
        ),
        Config(
            "meshserial secure",
            "meshserial share",
            "meshserial use",
            None,
            _meshserial_secure_server,
            _meshserial_secure_client,
            PTS_LINE,
            "share DEV=dev --listen 127.0.0.1:P | use dev@127.0.0.1:P --pty --trust-new "
            "(Noise handshake, authorized key)",
        ),
    ]


# ---- measurements ------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class _Waiter:
    """A poll object for one fd and one event kind, reused across round trips."""

    def __init__(self, fd: int, event: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, event)

    def read_exact(self, n: int, deadline: float) -> bytes:
        buf = b""
        while len(buf) < n:
            try:
                chunk = os.read(self.fd, n - len(buf))
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"round trip: {len(buf)} of {n} bytes within {STEP_TIMEOUT:g} s"
                    ) from None
                self._poll.poll(max(1, int(left * 1000)))
                continue
            if not chunk:
                raise BenchError(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return buf


def round_trips(app: int, master: int, size: int, warmup: int, iterations: int) -> list[float]:
    """Latencies in µs: app write -> device master has all -> written back -> app has all."""
    payloads = [os.urandom(size) for _ in range(64)]
    at_device = _Waiter(master, select.POLLIN)
    at_app = _Waiter(app, select.POLLIN)
    results: list[float] = []
    for i in range(warmup + iterations):
        payload = payloads[i % len(payloads)]
        deadline = time.monotonic() + STEP_TIMEOUT
        start = time.perf_counter_ns()
        write_all(app, payload, STEP_TIMEOUT)
        got = at_device.read_exact(size, deadline)
        write_all(master, got, STEP_TIMEOUT)
        back = at_app.read_exact(size, deadline)
        end = time.perf_counter_ns()
        if got != payload or back != payload:
            raise BenchError(
                f"round trip {i}: data corrupted ({payload.hex()} -> {got.hex()} -> {back.hex()})"
            )
        if i >= warmup:
            results.append((end - start) / 1000)
    return results


def transfer(
    sends: dict[int, bytes], receives: dict[int, int], timeout: float
) -> tuple[float, dict[int, bytes]]:
    """Write ``sends[fd]`` into each fd while reading ``receives[fd]`` bytes from each; returns the
    elapsed seconds (first write to last byte read) and what each reader got."""
    views = {fd: memoryview(data) for fd, data in sends.items()}
    got = {fd: bytearray() for fd in receives}
    poller = select.poll()
    masks: dict[int, int] = {}

    def update(fd: int) -> None:
        mask = 0
        if views.get(fd):
            mask |= select.POLLOUT
        if fd in got and len(got[fd]) < receives[fd]:
            mask |= select.POLLIN
        if mask != masks.get(fd):
            if fd in masks:
                poller.unregister(fd)
            if mask:
                poller.register(fd, mask)
                masks[fd] = mask
            else:
                masks.pop(fd, None)

    for fd in set(views) | set(got):
        update(fd)
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    while masks:
        left = deadline - time.monotonic()
        if left <= 0:
            state = ", ".join(f"fd {fd}: {len(b)}/{receives[fd]} received" for fd, b in got.items())
            raise BenchError(f"transfer incomplete after {timeout:g} s: {state}")
        for fd, revents in poller.poll(max(1, int(left * 1000))):
            if revents & select.POLLNVAL:
                raise BenchError(f"fd {fd} is not open")
            if fd in got and revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    chunk = os.read(fd, CHUNK)
                except BlockingIOError:
                    chunk = None
                except OSError as exc:
                    raise BenchError(f"read from fd {fd} failed: {exc}") from exc
                if chunk == b"":
                    raise BenchError(f"EOF on fd {fd} after {len(got[fd])} bytes")
                if chunk:
                    got[fd] += chunk
            if fd in views and revents & select.POLLOUT and views[fd]:
                try:
                    views[fd] = views[fd][os.write(fd, views[fd][:CHUNK]) :]
                except BlockingIOError:
                    pass
            update(fd)
    return time.perf_counter() - start, {fd: bytes(b) for fd, b in got.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Paced:
    """How a paced transfer went (both directions)."""

    seconds: float  # first write to the last byte read
    bytes_each_way: int
    writes_each_way: int
    lag_max_ms: float  # the latest any write was issued after its time
    late_writes: int  # writes issued more than one write interval after their time


def paced_transfer(
    app: int, master: int, *, write_size: int, rate: float, seconds: float
) -> tuple[Paced, dict[int, bytes], dict[int, bytes]]:
    """Write random data into ``app`` and into ``master`` at ``rate`` bytes per second each, in writes
    of ``write_size`` bytes on a clock (not as fast as the other side takes them), for ``seconds``,
    while reading what arrives on both; returns the figures, what was sent to each fd and what each fd
    received.

    Write k of a direction is due at ``k * write_size / rate`` seconds; device -> app runs half a write
    interval behind app -> device, so that the two directions' writes alternate like two independent
    streams instead of landing together. A write that comes due while the previous one of its direction
    is still partly unwritten (the other side is slow) waits for it: the pace is then that side's.
    Waiting is ``select`` with a microsecond timeout, so writes go out close to their time even when the
    interval is about a millisecond (``poll`` would round every wait up to a whole millisecond).
    """
    count = max(1, round(seconds * rate / write_size))
    interval = write_size / rate
    total = count * write_size
    sends = {app: os.urandom(total), master: os.urandom(total)}
    offsets = {app: 0.0, master: interval / 2}
    views = {fd: memoryview(data) for fd, data in sends.items()}
    issued = dict.fromkeys(sends, 0)  # writes started, per fd
    unwritten = {fd: memoryview(b"") for fd in sends}  # the rest of a partial write
    got = {master: bytearray(), app: bytearray()}  # keyed by the receiving fd
    lag_max = 0.0
    late = 0
    start = time.perf_counter()
    deadline = start + (count - 1) * interval + interval / 2 + PACED_DRAIN

    def due(fd: int) -> float:
        return start + offsets[fd] + issued[fd] * interval

    while True:
        now = time.perf_counter()
        for fd in sends:
            while issued[fd] < count and not unwritten[fd] and due(fd) <= now:
                lag = now - due(fd)
                lag_max = max(lag_max, lag)
                late += lag > interval
                chunk = views[fd][issued[fd] * write_size : (issued[fd] + 1) * write_size]
                issued[fd] += 1
                try:
                    unwritten[fd] = chunk[os.write(fd, chunk) :]
                except BlockingIOError:
                    unwritten[fd] = chunk
        readers = [fd for fd, buf in got.items() if len(buf) < total]
        writers = [fd for fd in sends if unwritten[fd]]
        pending = [due(fd) for fd in sends if issued[fd] < count and not unwritten[fd]]
        if not readers and not writers and not pending:
            break
        if now > deadline:
            state = ", ".join(f"fd {fd}: {len(buf)}/{total} received" for fd, buf in got.items())
            raise BenchError(f"paced transfer ({write_size} B writes) incomplete: {state}")
        wait = min([*pending, deadline]) - now
        ready_r, ready_w, _ = select.select(readers, writers, [], max(0.0, wait))
        for fd in ready_r:
            try:
                chunk_in = os.read(fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise BenchError(f"read from fd {fd} failed: {exc}") from exc
            if not chunk_in:
                raise BenchError(f"EOF on fd {fd} after {len(got[fd])} bytes")
            got[fd] += chunk_in
        for fd in ready_w:
            try:
                unwritten[fd] = unwritten[fd][os.write(fd, unwritten[fd]) :]
            except BlockingIOError:
                pass
    paced = Paced(
        seconds=time.perf_counter() - start,
        bytes_each_way=total,
        writes_each_way=count,
        lag_max_ms=lag_max * 1000,
        late_writes=late,
    )
    return paced, sends, {fd: bytes(buf) for fd, buf in got.items()}


def _check(what: str, sent: bytes, received: bytes) -> None:
    if len(received) != len(sent) or hashlib.sha256(received).digest() != hashlib.sha256(sent).digest():
        first = next((i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b), None)
        raise BenchError(
            f"{what}: DATA CORRUPTED: sent {len(sent)} bytes, received {len(received)}, first difference at "
            f"{first}"
        )


@dataclass(slots=True)
class Result:
    setup_link_ms: float = 0.0
    setup_usable_ms: float = 0.0
    latency_us: dict[str, dict[str, float]] = field(default_factory=dict)
    throughput_MBps: dict[str, float] = field(default_factory=dict)
    mb_moved: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_s_per_MB: dict[str, float] = field(default_factory=dict)
    rss_kib: dict[str, int] = field(default_factory=dict)
    # Per write size ("128B", "2048B"): CPU per MB at a serial-like pace, and how well the pace was held.
    paced: dict[str, dict[str, float]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    stderr: dict[str, list[str]] = field(default_factory=dict)  # what the processes said (last lines)
    notes: str = ""


def combine(rounds: list[Result]) -> Result:
    """One result per configuration from several rounds: the median of every number.

    Rounds run the configurations in turn (round-robin), so a noisy moment on a shared machine hits
    them all alike instead of one configuration's whole measurement.
    """
    if len(rounds) == 1:
        return rounds[0]
    med = statistics.median
    last = rounds[-1]
    return Result(
        setup_link_ms=med(r.setup_link_ms for r in rounds),
        setup_usable_ms=med(r.setup_usable_ms for r in rounds),
        latency_us={
            size: {k: med(r.latency_us[size][k] for r in rounds) for k in last.latency_us[size]}
            for size in last.latency_us
        },
        throughput_MBps={k: med(r.throughput_MBps[k] for r in rounds) for k in last.throughput_MBps},
        mb_moved=med(r.mb_moved for r in rounds),
        cpu_s={k: med(r.cpu_s[k] for r in rounds) for k in last.cpu_s},
        cpu_s_per_MB={k: med(r.cpu_s_per_MB[k] for r in rounds) for k in last.cpu_s_per_MB},
        rss_kib={k: int(med(r.rss_kib[k] for r in rounds)) for k in last.rss_kib},
        paced={
            size: {k: med(r.paced[size][k] for r in rounds) for k in last.paced[size]} for size in last.paced
        },
        pids=last.pids,
        stderr=last.stderr,
        notes=last.notes,
    )


def _open_link(link: Path, deadline: float) -> int:
    while True:
        try:
            fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
            continue
        tty.setraw(fd)
        return fd


def _first_round_trip(app: int, master: int, deadline: float) -> None:
    """One byte app -> device, then one byte device -> app (resent every 20 ms: a virtual port may
    drop data that arrives before it noticed the application)."""
    write_all(app, b"\x01", STEP_TIMEOUT)
    if read_exact(master, 1, STEP_TIMEOUT) != b"\x01":
        raise BenchError("set-up probe corrupted on the way to the device")
    waiter = select.poll()
    waiter.register(app, select.POLLIN)
    while time.monotonic() < deadline:
        write_all(master, b"\x02", STEP_TIMEOUT)
        if waiter.poll(20):
            return
    raise BenchError("set-up probe never reached the application")


@contextlib.contextmanager
def _running(config: Config, tmp: Path) -> Iterator[tuple[int, int, Proc, Proc, Result]]:
    """Start the server, then the client (timed), open the app side; stop everything on exit.

    Anything going wrong before the first round trip worked raises :class:`StartError`."""
    device = DevicePty()
    procs: list[Proc] = []
    result: Result | None = None
    app: int | None = None
    try:
        try:
            server_home, client_home = tmp / "server-home", tmp / "client-home"
            for home in (server_home, client_home):
                home.mkdir(mode=0o700)
            base = dict(os.environ, PYTHONUNBUFFERED="1", MESHSERIAL_LOOP=config.loop)
            if config.code is not None:
                # Without the working directory first on sys.path, PYTHONPATH decides which package runs.
                base |= {"PYTHONPATH": config.code, "PYTHONSAFEPATH": "1"}
            ctx = Ctx(
                device=device,
                port=free_tcp_port(),
                tmp=tmp,
                link=tmp / "ttyAPP",
                server_env=dict(base, MESHSERIAL_HOME=str(server_home)),
                client_env=dict(base, MESHSERIAL_HOME=str(client_home)),
            )
            server = config.start_server(ctx)
            procs.append(server)
            result = Result(notes=config.notes)
            started = time.perf_counter()
            client = Proc(config.client_label, config.client_argv(ctx), env=ctx.client_env)
            procs.append(client)
            if config.client_ready_line is not None:
                client.wait_line(config.client_ready_line, START_TIMEOUT)
            wait_until("client link", ctx.link.exists, START_TIMEOUT, client)
            result.setup_link_ms = (time.perf_counter() - started) * 1000
            deadline = time.monotonic() + START_TIMEOUT
            app = _open_link(ctx.link, deadline)
            _first_round_trip(app, device.master, deadline)
            result.setup_usable_ms = (time.perf_counter() - started) * 1000
        except (BenchError, OSError) as exc:
            raise StartError(f"{config.key} did not start: {exc}") from exc
        drain(app, settle=0.1)
        drain(device.master, settle=0.1)
        result.pids = {"server": server.pid, "client": client.pid}
        yield app, device.master, server, client, result
        # Still alive? (a crash mid-run would show as an error above, but say so plainly)
        for proc in (server, client):
            if proc.poll() is not None:
                raise BenchError(f"{proc.label} exited during the run\n{proc.output()}")
    finally:
        if app is not None:
            os.close(app)
        for proc in reversed(procs):
            proc.stop()
            if result is not None:
                role = "server" if proc is procs[0] else "client"
                result.stderr[role] = proc.stderr_lines()[-STDERR_LINES:]
        device.close()


def measure(config: Config, args: argparse.Namespace, number: int = 1) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="meshserial-bench-") as tmpdir,
        _running(config, Path(tmpdir)) as (app, master, server, client, result),
    ):
        _measure_open(app, master, server, client, result, args=args, number=number)
        return result


def measure_interleaved(
    configs: list[Config], args: argparse.Namespace, failed: dict[str, str]
) -> dict[str, list[Result]]:
    """Start every configuration once, then measure them step by step in turn, ``--rounds`` times.

    The processes stay up (idle between their turns, as a long-running server and client would be)
    and each step — the round trips of one payload size, one transfer, one paced write size — is taken
    for every configuration before the next step, in alternating order from round to round.
    Configurations are thus measured a fraction of a second apart all along (a paced step's length
    apart for those), so a slow spell of a shared machine falls on all of them alike. Set-up times are
    those of the one start. A configuration that does not start is noted in ``failed`` and left out.
    """
    rounds: dict[str, list[Result]] = {}
    firsts: dict[str, Result] = {}
    with contextlib.ExitStack() as stack:
        running: list[tuple[Config, tuple[int, int, Proc, Proc, Result]]] = []
        for config in configs:
            print(f"\n{config.key}: {config.notes}", flush=True)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="meshserial-bench-")))
            try:
                opened = stack.enter_context(_running(config, tmp))
            except StartError as exc:
                failed[config.key] = str(exc)
                print(f"  FAILED TO START: {exc}", flush=True)
                continue
            firsts[config.key] = opened[4]
            running.append((config, opened))
        size = args.mib * 1024 * 1024
        to_dev, to_app = os.urandom(size), os.urandom(size)
        for number in range(1, args.rounds + 1):
            started = time.monotonic()
            order = running if number % 2 == 1 else running[::-1]
            this: dict[str, Result] = {}
            for config, (_, _, _, _, first) in running:
                this[config.key] = Result(
                    setup_link_ms=first.setup_link_ms,
                    setup_usable_ms=first.setup_usable_ms,
                    pids=first.pids,
                    notes=first.notes,
                )
            if not args.paced_only:
                for payload in PAYLOAD_SIZES if number % 2 == 1 else PAYLOAD_SIZES[::-1]:
                    for config, (app, master, _, _, _) in order:
                        lat = round_trips(app, master, payload, args.warmup, args.iterations)
                        this[config.key].latency_us[f"{payload}B"] = _latency_summary(lat)
                cpu0 = {
                    config.key: {"server": server.cpu_seconds(), "client": client.cpu_seconds()}
                    for config, (_, _, server, client, _) in running
                }
                for step in TRANSFERS:
                    for config, (app, master, _, _, _) in order:
                        result = this[config.key]
                        result.throughput_MBps[step] = _transfer_step(
                            step, app, master, data=(to_dev, to_app), timeout=args.timeout
                        )
                for config, (_, _, server, client, _) in running:
                    result = this[config.key]
                    result.mb_moved = 4 * size / MB
                    for role, proc in (("server", server), ("client", client)):
                        result.cpu_s[role] = proc.cpu_seconds() - cpu0[config.key][role]
                        result.cpu_s_per_MB[role] = result.cpu_s[role] / result.mb_moved
            if args.paced or args.paced_only:
                for write_size in PACED_SIZES if number % 2 == 1 else PACED_SIZES[::-1]:
                    for config, (app, master, server, client, _) in order:
                        this[config.key].paced[f"{write_size}B"] = _paced_step(
                            app, master, server, client, write_size=write_size, args=args
                        )
            for config, (_, _, server, client, _) in running:
                result = this[config.key]
                for role, proc in (("server", server), ("client", client)):
                    result.rss_kib[role] = proc.rss_kib()
                rounds.setdefault(config.key, []).append(result)
            elapsed = time.monotonic() - started
            print(f"  round {number}/{args.rounds} in {elapsed:.1f} s", flush=True)
    for key, each in rounds.items():
        each[-1].stderr = firsts[key].stderr  # filled in when the processes stopped
    return rounds


TRANSFERS = ("app_to_dev", "dev_to_app", "bidir_sum")


def _latency_summary(lat: list[float]) -> dict[str, float]:
    return {"median": statistics.median(lat), "p99": percentile(lat, 0.99), "min": min(lat), "n": len(lat)}


def _transfer_step(step: str, app: int, master: int, *, data: tuple[bytes, bytes], timeout: float) -> float:
    """One of the three transfers, checked; returns MB/s (the sum of both directions for both ways)."""
    to_dev, to_app = data
    size = len(to_dev)
    if step == "app_to_dev":
        elapsed, got = transfer({app: to_dev}, {master: size}, timeout)
        _check("app -> device", to_dev, got[master])
        return size / elapsed / MB
    if step == "dev_to_app":
        elapsed, got = transfer({master: to_app}, {app: size}, timeout)
        _check("device -> app", to_app, got[app])
        return size / elapsed / MB
    elapsed, got = transfer({app: to_dev, master: to_app}, {master: size, app: size}, timeout)
    _check("bidirectional, app -> device", to_dev, got[master])
    _check("bidirectional, device -> app", to_app, got[app])
    return 2 * size / elapsed / MB


def _paced_step(
    app: int, master: int, server: Proc, client: Proc, *, write_size: int, args: argparse.Namespace
) -> dict[str, float]:
    """One paced transfer (both ways at once), checked; the CPU each process spent per MB moved."""
    procs = {"server": server, "client": client}
    before = {role: (proc.cpu_seconds(), proc.sched_cpu_seconds()) for role, proc in procs.items()}
    paced, sent, got = paced_transfer(
        app, master, write_size=write_size, rate=args.paced_kbps * 1000, seconds=args.paced_seconds
    )
    after = {role: (proc.cpu_seconds(), proc.sched_cpu_seconds()) for role, proc in procs.items()}
    _check(f"paced {write_size} B writes, app -> device", sent[app], got[master])
    _check(f"paced {write_size} B writes, device -> app", sent[master], got[app])
    moved = 2 * paced.bytes_each_way / MB
    out = {
        "mb_moved": moved,
        "seconds": paced.seconds,
        "kBps_each_way": paced.bytes_each_way / paced.seconds / 1000,
        "writes_each_way": paced.writes_each_way,
        "lag_max_ms": paced.lag_max_ms,
        "late_writes": paced.late_writes,
    }
    for role in procs:
        out[f"{role}_cpu_s"] = after[role][0] - before[role][0]
        out[f"{role}_cpu_s_per_MB"] = out[f"{role}_cpu_s"] / moved
        out[f"{role}_sched_cpu_s_per_MB"] = (after[role][1] - before[role][1]) / moved
    return out


def _measure_open(
    app: int,
    master: int,
    server: Proc,
    client: Proc,
    result: Result,
    *,
    args: argparse.Namespace,
    number: int = 1,
) -> None:
    # Sizes in turn, the other way round every second round: whatever drifts during a measurement
    # (time since start, the machine) then does not always fall on the same size.
    if not args.paced_only:
        for size in PAYLOAD_SIZES if number % 2 == 1 else PAYLOAD_SIZES[::-1]:
            lat = round_trips(app, master, size, args.warmup, args.iterations)
            result.latency_us[f"{size}B"] = _latency_summary(lat)
        size = args.mib * 1024 * 1024
        to_dev, to_app = os.urandom(size), os.urandom(size)
        cpu0 = {"server": server.cpu_seconds(), "client": client.cpu_seconds()}
        for step in TRANSFERS:
            result.throughput_MBps[step] = _transfer_step(
                step, app, master, data=(to_dev, to_app), timeout=args.timeout
            )
        result.mb_moved = 4 * size / MB
        for role, proc in (("server", server), ("client", client)):
            result.cpu_s[role] = proc.cpu_seconds() - cpu0[role]
            result.cpu_s_per_MB[role] = result.cpu_s[role] / result.mb_moved
    if args.paced or args.paced_only:
        for write_size in PACED_SIZES if number % 2 == 1 else PACED_SIZES[::-1]:
            result.paced[f"{write_size}B"] = _paced_step(
                app, master, server, client, write_size=write_size, args=args
            )
    for role, proc in (("server", server), ("client", client)):
        result.rss_kib[role] = proc.rss_kib()


# ---- report -----------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return next((line for line in text if "version" in line.lower()), text[0] if text else "?").strip()


ROWS: list[tuple[str, Callable[[Result], float], str]] = [
    ("set-up: client start -> link appears (ms)", lambda r: r.setup_link_ms, "{:.0f}"),
    ("set-up: client start -> first round trip (ms)", lambda r: r.setup_usable_ms, "{:.0f}"),
    ("round trip 1 B, median (µs)", lambda r: r.latency_us["1B"]["median"], "{:.0f}"),
    ("round trip 1 B, p99 (µs)", lambda r: r.latency_us["1B"]["p99"], "{:.0f}"),
    ("round trip 64 B, median (µs)", lambda r: r.latency_us["64B"]["median"], "{:.0f}"),
    ("round trip 64 B, p99 (µs)", lambda r: r.latency_us["64B"]["p99"], "{:.0f}"),
    ("throughput app -> device (MB/s)", lambda r: r.throughput_MBps["app_to_dev"], "{:.1f}"),
    ("throughput device -> app (MB/s)", lambda r: r.throughput_MBps["dev_to_app"], "{:.1f}"),
    ("throughput both ways at once, sum (MB/s)", lambda r: r.throughput_MBps["bidir_sum"], "{:.1f}"),
    ("server CPU per MB moved (ms/MB)", lambda r: r.cpu_s_per_MB["server"] * 1000, "{:.1f}"),
    ("client CPU per MB moved (ms/MB)", lambda r: r.cpu_s_per_MB["client"] * 1000, "{:.1f}"),
]


def _paced(size: int, name: str, scale: float = 1.0) -> Callable[[Result], float]:
    """A getter for one paced figure of one write size."""
    return lambda r: r.paced[f"{size}B"][name] * scale


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


for _size in PACED_SIZES:
    _at = f"paced {_size_label(_size)}:"
    ROWS += [
        (f"{_at} server CPU per MB (ms/MB)", _paced(_size, "server_cpu_s_per_MB", 1000), "{:.0f}"),
        (f"{_at} client CPU per MB (ms/MB)", _paced(_size, "client_cpu_s_per_MB", 1000), "{:.0f}"),
        (f"{_at} server, ns clock (ms/MB)", _paced(_size, "server_sched_cpu_s_per_MB", 1000), "{:.0f}"),
        (f"{_at} client, ns clock (ms/MB)", _paced(_size, "client_sched_cpu_s_per_MB", 1000), "{:.0f}"),
        (f"{_at} KB/s each way, as held", _paced(_size, "kBps_each_way"), "{:.1f}"),
        (f"{_at} latest write (ms after its time)", _paced(_size, "lag_max_ms"), "{:.1f}"),
    ]
ROWS += [
    ("server RSS at the end (MiB)", lambda r: r.rss_kib["server"] / 1024, "{:.1f}"),
    ("client RSS at the end (MiB)", lambda r: r.rss_kib["client"] / 1024, "{:.1f}"),
]


def _value(get: Callable[[Result], float], result: Result) -> float | None:
    """A row's number, or None where that step was not measured."""
    try:
        return get(result)
    except KeyError:
        return None


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


# (table, column, JSON name, how to get it, higher is better)
RATIOS: list[tuple[str, str, str, Callable[[Result], float], bool]] = [
    ("main", "RTT 1 B", "latency_1B_median_ratio", lambda r: r.latency_us["1B"]["median"], False),
    ("main", "RTT 64 B", "latency_64B_median_ratio", lambda r: r.latency_us["64B"]["median"], False),
    *(
        ("main", column, f"throughput_{k}_ratio", lambda r, k=k: r.throughput_MBps[k], True)
        for column, k in (("app->dev", "app_to_dev"), ("dev->app", "dev_to_app"), ("both ways", "bidir_sum"))
    ),
    *(
        (
            "paced",
            f"{role} {_size_label(size)}{clock}",
            f"paced_{size}B_{role}_{field}_ratio",
            _paced(size, f"{role}_{field}_s_per_MB"),
            False,
        )
        for clock, field in (("", "cpu"), (", ns", "sched_cpu"))
        for size in PACED_SIZES
        for role in ("server", "client")
    ),
]
TABLES = {
    "main": "Ratios: latency = config / reference (lower is better); throughput = config / reference "
    "(higher is better)",
    "paced": "Ratios at the serial-like pace: CPU per MB, config / reference (lower is better); from "
    "utime + stime, then from the ns clock",
}


def ratios(results: dict[str, Result]) -> dict[str, dict[str, float]]:
    """Each configuration against socat+socat, secure against plain, and each "(uvloop)" configuration
    against the same one on asyncio's loop; only for the numbers both have."""
    out: dict[str, dict[str, float]] = {}

    def compare(a: Result, b: Result) -> dict[str, float]:
        pairs = {name: (_value(get, a), _value(get, b)) for _, _, name, get, _ in RATIOS}
        return {
            name: x / y if y else math.nan
            for name, (x, y) in pairs.items()
            if x is not None and y is not None
        }

    base = results.get("socat+socat")
    if base is not None:
        for key, result in results.items():
            if key != "socat+socat":
                out[f"{key} vs socat+socat"] = compare(result, base)
    for suffix in ("", " (uvloop)"):
        secure, plain = f"meshserial secure{suffix}", f"meshserial plain{suffix}"
        if secure in results and plain in results:
            out[f"{secure} vs plain"] = compare(results[secure], results[plain])
    for key, result in results.items():
        if key.endswith(" (uvloop)") and key.removesuffix(" (uvloop)") in results:
            out[f"{key} vs asyncio"] = compare(result, results[key.removesuffix(" (uvloop)")])
        if f"{key} (baseline)" in results:
            out[f"{key} vs baseline"] = compare(result, results[f"{key} (baseline)"])
    return out


def report(results: dict[str, Result], skipped: dict[str, str], failed: dict[str, str]) -> str:
    keys = list(results)
    rows = []
    for label, get, fmt in ROWS:
        values = [_value(get, results[k]) for k in keys]
        if any(v is not None for v in values):
            rows.append([label, *("-" if v is None else fmt.format(v) for v in values)])
    parts = [_table(["", *keys], rows)]
    for key, reason in skipped.items():
        parts.append(f"skipped {key}: {reason}")
    for key, reason in failed.items():
        parts.append(f"FAILED TO START {key}: {reason.splitlines()[0]}")
    said = [
        f"  {key} {role}: {line}"
        for key, result in results.items()
        for role, lines in result.stderr.items()
        for line in lines
    ]
    if said:
        parts.append("stderr of the processes under test (last lines):\n" + "\n".join(said))
    table = ratios(results)
    for group, title in TABLES.items():
        columns = [
            (column, name, higher)
            for where, column, name, _, higher in RATIOS
            if where == group and any(name in r for r in table.values())
        ]
        if not columns:
            continue
        rows = []
        for name, r in table.items():
            cells = []
            for _, key, higher in columns:
                if key not in r or math.isnan(r[key]):
                    cells.append("-")
                elif higher:
                    cells.append(f"{r[key] * 100:.0f}%")
                else:
                    cells.append(f"{r[key]:.2f}x")
            rows.append([name, *cells])
        parts.append(title + "\n" + _table(["ratio", *(column for column, _, _ in columns)], rows))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=1000, help="measured round trips per size (1000)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured round trips first (50)")
    parser.add_argument("--mib", type=int, default=8, help="MiB per direction per transfer (8)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per transfer (120)")
    parser.add_argument("--only", action="append", metavar="CONFIG", help="run only this configuration")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every configuration this many times, in turn, and report the medians (1)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="start every configuration once and measure them in turn while all run (see README)",
    )
    parser.add_argument(
        "--paced",
        action="store_true",
        help="also measure CPU per MB at a serial-like pace: 100 KB/s each way in 128 B and in 2 KiB writes",
    )
    parser.add_argument(
        "--paced-only", action="store_true", help="only the paced measurement (no round trips, no transfers)"
    )
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="seconds per paced write size (10)")
    parser.add_argument(
        "--paced-kbps", type=float, default=PACED_KBPS, help="paced KB/s per direction, KB = 1000 bytes (100)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the meshserial configurations from the checkout in DIR (e.g. git worktree add DIR "
        "COMMIT), interleaved, and compare",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write all numbers as JSON")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0 or args.mib < 1 or args.timeout <= 0 or args.rounds < 1:
        parser.error("--iterations and --mib must be positive, --warmup not negative")
    if args.paced_seconds <= 0 or args.paced_kbps <= 0:
        parser.error("--paced-seconds and --paced-kbps must be positive")
    known = [c.key for c in _configs(args.baseline)]
    if unknown := [name for name in args.only or [] if name not in known]:
        parser.error(f"unknown configuration {', '.join(map(repr, unknown))}; known: {', '.join(known)}")

    versions = {
        "python": platform.python_version(),
        "socat": _version([SOCAT, "-V"]) if SOCAT else "not installed",
        "ser2net": _version([SER2NET, "-v"]) if SER2NET else "not installed",
    }
    print(f"CPUs: {os.cpu_count()}   Python {versions['python']}   {platform.platform()}")
    print(f"{versions['socat']}; {versions['ser2net']}")
    if not args.paced_only:
        print(
            f"round trips: {args.warmup} warm-up + {args.iterations} measured per size; transfers: "
            f"{args.mib} MiB per direction; MB = 10^6 bytes; set-up includes interpreter start-up"
        )
    if args.paced or args.paced_only:
        print(
            f"paced: {args.paced_kbps:g} KB/s each way at once for {args.paced_seconds:g} s, in writes of "
            f"{' and of '.join(f'{size} B' for size in PACED_SIZES)}; KB = 10^3 bytes"
        )
    configs = [c for c in _configs(args.baseline) if not args.only or c.key in args.only]
    rounds: dict[str, list[Result]] = {}
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for config in configs:
        if config.missing is not None:
            skipped[config.key] = config.missing
            print(f"\n{config.key}: skipped: {config.missing}", flush=True)
    available = [c for c in configs if c.missing is None]
    if args.interleave:
        rounds = measure_interleaved(available, args, failed)
    else:
        for number in range(1, args.rounds + 1):
            for config in available:
                if config.key in failed:
                    continue
                label = f" (round {number}/{args.rounds})" if args.rounds > 1 else ""
                print(f"\n{config.key}{label}: {config.notes}", flush=True)
                started = time.monotonic()
                try:
                    rounds.setdefault(config.key, []).append(measure(config, args, number))
                except StartError as exc:
                    failed[config.key] = str(exc)
                    print(f"  FAILED TO START: {exc}", flush=True)
                    continue
                print(f"  done in {time.monotonic() - started:.1f} s", flush=True)
    results = {key: combine(each) for key, each in rounds.items() if each}
    print()
    print(report(results, skipped, failed))
    if args.json is not None:
        document: dict[str, Any] = {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "versions": versions,
            "parameters": {
                "rounds": args.rounds,
                "interleave": args.interleave,
                "iterations": args.iterations,
                "warmup": args.warmup,
                "mib_per_direction": args.mib,
                "payload_sizes": list(PAYLOAD_SIZES),
                "paced": args.paced or args.paced_only,
                "paced_only": args.paced_only,
                "paced_seconds": args.paced_seconds,
                "paced_kBps_each_way": args.paced_kbps,
                "paced_write_sizes": list(PACED_SIZES),
                "units": "latency in µs; throughput in MB/s with MB = 10^6 bytes; CPU in s per MB moved; "
                "paced rates in KB/s with KB = 10^3 bytes",
            },
            "results": {key: _as_dict(result) for key, result in results.items()},
            "rounds": {key: [_as_dict(one) for one in each] for key, each in rounds.items()},
            "skipped": skipped,
            "failed_to_start": failed,
            "ratios": ratios(results),
        }
        args.json.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _as_dict(result: Result) -> dict[str, Any]:
    return {name: getattr(result, name) for name in Result.__slots__}


if __name__ == "__main__":
    sys.exit(main())
