"""What hostile peers cost a real ``meshserial share``: memory, handshake latency, log lines.

    python -m benchmarks.hostile [--device-mib 150] [--tries 20] [--bursts 10] [--burst-size 500]
                                 [--only watcher|suspend|flood|bursts ...] [--json FILE]

Four measurements, each against a fresh server (``share`` of a PTY or ``sim:echo``, private
``MESHSERIAL_HOME`` in a temporary directory, ``--no-mdns``):

* **watcher**: one authorized read-only client completes its hello, then never reads (it pings every
  second, so the keepalive does not drop it) while ``--device-mib`` MiB are written into the device.
  Server RSS before, peak (``VmRSS`` sampled every 50 ms from a thread) and 1 s after the last byte;
  whether and when the server logged ``dropping watcher``. Target from the issue: RSS < 64 MB.
* **suspend**: the same with a read-only client that sends RFC 2217 FLOWCONTROL-SUSPEND instead, while
  a read-write client (the holder) reads and acknowledges everything: whether the holder received every
  byte (length and SHA-256), its throughput, the peak RSS.
* **flood** (root only: network namespaces): ``--tries`` legitimate handshakes + hello
  (``tests.hostile.flood legit``) with no flood, then again while 1 000 idle and slow connections from 64
  addresses hold the handshake slots (``tests.hostile.flood attack``): successes, median, p90, max.
* **bursts**: ``--bursts`` bursts of ``--burst-size`` connections from 127.0.0.2-33, each sending an
  impossible frame length: RSS after a warm-up burst and after each burst, and the server's log lines.

The misbehaving clients are those of the hostile tests (``tests/hostile/peer.py``, ``flood.py``).
Nothing is asserted; every wait is bounded; only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks._procs import ROOT, BenchError, Proc, rss_kib
from meshserial.logonce import WINDOW
from meshserial.proto import session as sess
from meshserial.proto.telnet import TelnetCodec, TelnetData
from tests.helpers import DevicePty, device_pty, ok, private_home
from tests.hostile import flood
from tests.hostile.peer import FLOW_SUSPEND, WILL_COM_PORT, RawClient, Server, new_client, write_some
from tests.hostile.test_memory import _malformed_burst
from tests.netns import Netns, netns_unavailable

MiB = 1024 * 1024
MB = 1_000_000
SCENARIOS = ("watcher", "suspend", "flood", "bursts")
RSS_TARGET = 64 * MB
RSS_INTERVAL = 0.05  # seconds between VmRSS samples
PING_INTERVAL = 1.0  # the misbehaving watchers ping this often (the server's keepalive is 9 s)
SETTLE = 1.0  # "after" is this long after the last byte was written
# Device output: a 255-byte cycle without 0xFF, so the holder's telnet stream is the data itself (plus
# the server's option negotiation) and its throughput is not skewed by IAC doubling.
PERIOD = 255
BLOCK = PERIOD * 256
PATTERN = bytes(range(PERIOD)) * 512
FLOOD_CONNECTIONS = 1000
FLOOD_SOURCES = 64
SERVER_ADDRESS = "198.18.2.1"
LEGIT_ADDRESS = "198.18.2.200"
FLOOD_PORT = 7217
FLOOD_CMD = [sys.executable, "-m", flood.__name__]
WARMUP_BURST = 100
SUMMARY_WAIT = WINDOW + 3  # from the first burst: the log window has ended and its summaries are out


# ---- shared pieces ---------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


class RssSampler:
    """``VmRSS`` of one process every :data:`RSS_INTERVAL` seconds, from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = time.monotonic()
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kib = rss_kib(self.pid)
            except (OSError, BenchError):
                return  # the process is gone
            self.samples.append((time.monotonic() - self.start, kib * 1024))
            self._stop.wait(RSS_INTERVAL)

    def peak(self) -> tuple[float, int]:
        """(when, bytes) of the highest sample."""
        return max(self.samples, key=lambda s: s[1]) if self.samples else (0.0, 0)

    def __enter__(self) -> RssSampler:
        self.start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


class Pinger:
    """Pings ``client`` every :data:`PING_INTERVAL` seconds from a thread: it reads nothing, but the
    server's keepalive must not be what drops it."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.pings = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PING_INTERVAL) and not self.client.eof:
            try:
                self.client.ping()
            except OSError as exc:  # a send timeout: the server stopped reading us
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.pings += 1

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(PING_INTERVAL + 6)  # a ping blocked in sendall gives up after 5 s


class DeviceFeed:
    """Writes ``total`` bytes into the device master as fast as the server reads them (hashed)."""

    def __init__(self, device: DevicePty, total: int) -> None:
        self.device = device
        self.total = total
        self.written = 0
        self.sha = hashlib.sha256()
        self.started = 0.0
        self.ended = 0.0

    def run(self, timeout: float) -> None:
        self.started = time.monotonic()
        deadline = self.started + timeout
        while self.written < self.total and time.monotonic() < deadline:
            offset = self.written % PERIOD
            chunk = PATTERN[offset : offset + min(BLOCK, self.total - self.written)]
            n = write_some(self.device, chunk)
            self.sha.update(chunk[:n])
            self.written += n
        self.ended = time.monotonic()


class DropWatch:
    """Notices the server's ``dropping watcher NAME`` line (a thread waiting on its stderr)."""

    def __init__(self, server: Server, name: str, feed: DeviceFeed, timeout: float) -> None:
        # "gps: dropping watcher NAME (ms1…): N bytes of output waiting for it"
        self.pattern = rf"dropping watcher {re.escape(name)}\b[^:]*: (\d+) bytes"
        self.server = server
        self.feed = feed
        self.timeout = timeout
        self.after: float | None = None  # seconds since the device feed started
        self.written = 0  # device bytes written by then
        self.held = 0  # what the server said it held for the watcher
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            match = self.server.proc.wait_line(self.pattern, timeout=self.timeout, stderr=True)
        except AssertionError:  # not within the timeout, or the server exited
            return
        self.after = time.monotonic() - self.feed.started
        self.written = self.feed.written
        self.held = int(match.group(1))

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def result(self) -> dict[str, Any]:
        return {"dropped": self.after is not None, "after_s": self.after, "written_by_then": self.written,
                "held_bytes": self.held}  # fmt: skip


def _accepted(answer: sess.Message, who: str) -> None:
    if not isinstance(answer, sess.Accept):
        raise BenchError(f"{who}: the server answered the hello with {answer}")


# ---- 1. a stalled watcher / a suspending watcher beside a holder -------------------------------------


def watcher_scenario(total: int, timeout: float) -> dict[str, Any]:
    """One read-only client that stops reading after its hello; ``total`` bytes of device output."""
    with tempfile.TemporaryDirectory(prefix="ms-bench-hostile-") as tmp, device_pty() as device:
        server = Server(Path(tmp), device)
        try:
            watcher = new_client(server, "--ports", "*=ro", "--name", "stalled")
            with RawClient(server.port, watcher) as client:
                _accepted(client.request(sess.Hello(port="gps", mode="ro")), "watcher")
                before = server.rss()
                feed = DeviceFeed(device, total)
                drop = DropWatch(server, "stalled", feed, timeout + 20)
                with RssSampler(server.proc.proc.pid) as rss, Pinger(client) as pinger:
                    drop.start()
                    feed.run(timeout)
                    time.sleep(SETTLE)
                    after = server.rss()
                drop.join(1)
        finally:
            exit_code = server.stop()
    peak_at, peak = rss.peak()
    return {
        "device_bytes": total,
        "written": feed.written,
        "write_s": feed.ended - feed.started,
        "rss_before": before,
        "rss_peak": peak,
        "rss_peak_at_s": peak_at,
        "rss_after": after,
        "rss_target": RSS_TARGET,
        "watcher": drop.result(),
        "pings": pinger.pings,
        "ping_error": pinger.error,
        "server_exit": exit_code,
        "rss_samples": rss.samples,
    }


class HolderReader:
    """Reads the holder's connection in a thread: decodes its telnet stream, hashes and counts the data."""

    def __init__(self, client: RawClient, total: int, timeout: float) -> None:
        self.client = client
        self.total = total
        self.deadline = time.monotonic() + timeout
        self.codec = TelnetCodec(local_options=frozenset(), remote_options=frozenset())
        self.sha = hashlib.sha256()
        self.received = 0
        self.last = 0.0  # when the last data arrived
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        consumed = 0
        try:
            while self.received < self.total and not self._stop.is_set() and not self.client.eof:
                if time.monotonic() > self.deadline:
                    self.error = f"timed out after {self.received} of {self.total} bytes"
                    return
                self.client._receive(self.deadline)  # also acknowledges, as a real client does
                if len(self.client.data) > consumed:
                    fresh = bytes(self.client.data[consumed:])
                    consumed += len(fresh)
                    for event in self.codec.receive_data(fresh):
                        if isinstance(event, TelnetData):
                            self.sha.update(event.data)
                            self.received += len(event.data)
                            self.last = time.monotonic()
            if self.client.eof and self.received < self.total:
                self.error = f"the server closed the connection after {self.received} bytes"
        except Exception as exc:  # reported with the figures
            self.error = f"{type(exc).__name__}: {exc}"

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._stop.set()
        self._thread.join(2)


def suspend_scenario(total: int, timeout: float) -> dict[str, Any]:
    """A holder reading everything and a watcher that sent FLOWCONTROL-SUSPEND; ``total`` bytes."""
    with tempfile.TemporaryDirectory(prefix="ms-bench-hostile-") as tmp, device_pty() as device:
        server = Server(Path(tmp), device)
        try:
            writer = new_client(server, "--name", "holder")
            watcher = new_client(server, "--ports", "*=ro", "--name", "suspender")
            with RawClient(server.port, writer) as holder, RawClient(server.port, watcher) as suspender:
                _accepted(holder.request(sess.Hello(port="gps")), "holder")
                _accepted(suspender.request(sess.Hello(port="gps", mode="ro")), "suspender")
                suspender.send(WILL_COM_PORT + FLOW_SUSPEND)
                before = server.rss()
                feed = DeviceFeed(device, total)
                drop = DropWatch(server, "suspender", feed, timeout + 20)
                reader = HolderReader(holder, total, timeout + 20)
                with RssSampler(server.proc.proc.pid) as rss, Pinger(suspender) as pinger:
                    drop.start()
                    reader.start()
                    feed.run(timeout)
                    reader.stop(max(0.0, reader.deadline - time.monotonic()))
                    after = server.rss()
                drop.join(1)
        finally:
            exit_code = server.stop()
    peak_at, peak = rss.peak()
    elapsed = reader.last - feed.started if reader.received else 0.0
    return {
        "device_bytes": total,
        "written": feed.written,
        "write_s": feed.ended - feed.started,
        "holder_received": reader.received,
        "holder_intact": reader.received == feed.written and reader.sha.digest() == feed.sha.digest(),
        "holder_error": reader.error,
        "holder_s": elapsed,
        "holder_MB_per_s": reader.received / elapsed / MB if elapsed > 0 else 0.0,
        "rss_before": before,
        "rss_peak": peak,
        "rss_peak_at_s": peak_at,
        "rss_after": after,
        "watcher": drop.result(),
        "pings": pinger.pings,
        "ping_error": pinger.error,
        "server_exit": exit_code,
        "rss_samples": rss.samples,
    }


# ---- 2. legitimate handshakes under a slot flood ---------------------------------------------------


def _legit(net: Netns, ns: str, home: str, tries: int) -> dict[str, Any]:
    argv = [*FLOOD_CMD, "legit", SERVER_ADDRESS, str(FLOOD_PORT), "--source", LEGIT_ADDRESS, "--home", home,
            "--tries", str(tries)]  # fmt: skip
    try:
        done = net.run(ns, argv, cwd=ROOT, timeout=30 + 6 * tries)  # a try gives up after 5 s
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"flood legit did not finish within {exc.timeout:g} s") from exc
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"flood legit failed: {exc.stderr}") from exc
    results: list[float | str] = json.loads(done.stdout.splitlines()[-1])
    times = [r * 1000 for r in results if isinstance(r, float)]
    return {
        "tries": tries,
        "ok": len(times),
        "median_ms": statistics.median(times) if times else None,
        "p90_ms": percentile(times, 0.9) if times else None,
        "max_ms": max(times) if times else None,
        "errors": [r for r in results if isinstance(r, str)],
        "times_ms": times,
    }


def _server_connections(net: Netns, ns: str) -> int:
    """Established TCP connections to the server's port, counted in its namespace."""
    done = net.run(ns, ["ss", "-Htn", "state", "established", f"( sport = :{FLOOD_PORT} )"], check=False)
    return len(done.stdout.splitlines())


def _tcp_counters(net: Netns, ns: str) -> dict[str, int]:
    """The ``Tcp:`` counters of /proc/net/snmp in ``ns`` (PassiveOpens: connections accepted, ...)."""
    rows = [line.split()[1:] for line in net.run(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
            if line.startswith("Tcp:")]  # fmt: skip
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=True)}


def flood_scenario(tries: int) -> dict[str, Any]:
    """Legitimate handshakes without, then with, 1 000 slot-holding connections from 64 addresses."""
    reason = netns_unavailable()
    if reason is not None:
        return {"skipped": reason}
    with tempfile.TemporaryDirectory(prefix="ms-bench-hostile-") as tmp, Netns() as net:
        base = Path(tmp)
        server_ns, lan_ns = net.host("srv"), net.host("lan")
        net.link(
            server_ns, lan_ns, ifname="eth0", peer_ifname="eth0", address=f"{SERVER_ADDRESS}/24",
            peer_address=f"{LEGIT_ADDRESS}/24",
        )  # fmt: skip
        for i in range(FLOOD_SOURCES):
            net.run(lan_ns, ["ip", "addr", "add", f"198.18.2.{10 + i}/24", "dev", "eth0"])
        server_env = private_home(base, "server")
        ok("keygen", env=server_env)
        client_env = private_home(base, "client")
        ok("authorize", ok("keygen", env=client_env), "--ports", "*=ro", env=server_env)
        home = client_env["MESHSERIAL_HOME"]
        share = Proc(
            "share",
            ["ip", "netns", "exec", server_ns, sys.executable, "-m", "meshserial", "share", "sim:echo=gps",
             "--listen", f"{SERVER_ADDRESS}:{FLOOD_PORT}", "--no-mdns"],
            env=server_env,
        )  # fmt: skip
        attacker: Proc | None = None
        try:
            share.wait_line(r"sharing gps", 20)
            baseline = _legit(net, lan_ns, home, tries)
            rss_before, cpu_before = share.rss_kib() * 1024, share.cpu_seconds()
            started = time.monotonic()
            attacker = Proc(
                "attack",
                ["ip", "netns", "exec", lan_ns, *FLOOD_CMD, "attack", SERVER_ADDRESS, str(FLOOD_PORT),
                 "--sources", f"198.18.2.10-{10 + FLOOD_SOURCES - 1}", "--count", str(FLOOD_CONNECTIONS),
                 "--seconds", str(60 + 6 * tries)],
            )  # fmt: skip
            attacker.wait_line(r'"ready"', 60)
            ready_s = time.monotonic() - started
            held = _server_connections(net, server_ns)
            tcp_before, legit_started = _tcp_counters(net, server_ns), time.monotonic()
            with RssSampler(share.pid) as rss:
                flooded = _legit(net, lan_ns, home, tries)
            legit_s = time.monotonic() - legit_started
            tcp_after = _tcp_counters(net, server_ns)
            flood_s = time.monotonic() - started
            cpu = share.cpu_seconds() - cpu_before
            attacker_cpu = attacker.cpu_seconds()
            alive = share.poll() is None
        finally:
            if attacker is not None:
                attacker.stop()
            share.stop()
    return {
        "connections": FLOOD_CONNECTIONS,
        "sources": FLOOD_SOURCES,
        "flood_ready_s": ready_s,
        "server_tcp_connections_at_start": held,
        "baseline": baseline,
        "flood": flooded,
        "server_rss_before": rss_before,
        "server_rss_peak_during": rss.peak()[1],
        "server_cpu_s_during_flood": cpu,
        "attacker_cpu_s": attacker_cpu,
        "flood_s": flood_s,
        "legit_under_flood_s": legit_s,
        # Connections the server's kernel accepted, and resets, while the legit run was under way.
        "server_accepted_during_legit": tcp_after["PassiveOpens"] - tcp_before["PassiveOpens"],
        "server_resets_sent_during_legit": tcp_after["OutRsts"] - tcp_before["OutRsts"],
        "server_log_lines": len(share.stderr_lines()),
        "server_alive": alive,
    }


# ---- 3. bursts of malformed connections ------------------------------------------------------------


def bursts_scenario(bursts: int, size: int) -> dict[str, Any]:
    """RSS after each burst of ``size`` connections sending an impossible frame length."""
    with tempfile.TemporaryDirectory(prefix="ms-bench-hostile-") as tmp, device_pty() as device:
        server = Server(Path(tmp), device)
        try:
            first = len(server.proc.stderr.splitlines())
            started = time.monotonic()
            _malformed_burst(server.port, WARMUP_BURST)  # first-use allocations are not a leak
            before = server.rss()
            after: list[int] = []
            seconds: list[float] = []
            for _ in range(bursts):
                t0 = time.monotonic()
                _malformed_burst(server.port, size)
                seconds.append(time.monotonic() - t0)
                after.append(server.rss())
            elapsed = time.monotonic() - started
            lines = server.proc.stderr.splitlines()[first:]
            # Repeats are summarised when their window ends (the server flushes every few seconds).
            time.sleep(max(0.0, started + SUMMARY_WAIT - time.monotonic()))
            summaries = server.proc.stderr.splitlines()[first + len(lines) :]
        finally:
            exit_code = server.stop()
    return {
        "bursts": bursts,
        "burst_size": size,
        "warmup": WARMUP_BURST,
        "rss_before": before,
        "rss_after_each": after,
        "burst_s": seconds,
        "elapsed_s": elapsed,
        "log_lines": len(lines),
        "log_lines_naming_sources": sum("127.0.0." in line for line in lines),
        "summary_lines_after": len(summaries),
        "summary_wait_s": SUMMARY_WAIT,
        "log": lines + summaries,
        "server_exit": exit_code,
    }


# ---- report ----------------------------------------------------------------------------------------


def _drop_line(drop: dict[str, Any]) -> str:
    if not drop["dropped"]:
        return "   watcher NOT dropped"
    return (
        f"   watcher dropped {drop['after_s']:.2f} s into the output, after "
        f"{drop['written_by_then'] / MiB:.1f} MiB written "
        f"(server held {drop['held_bytes'] / MiB:.2f} MiB for it)"
    )


def _written_line(r: dict[str, Any]) -> str:
    note = "" if r["written"] == r["device_bytes"] else f"  ONLY {r['written'] / MiB:.1f} MiB (timed out)"
    rate = r["written"] / r["write_s"] / MB if r["write_s"] > 0 else 0.0
    return (
        f"   {r['device_bytes'] / MiB:.0f} MiB of device output written in {r['write_s']:.1f} s "
        f"({rate:.1f} MB/s){note}"
    )


def _rss_line(r: dict[str, Any]) -> str:
    return (
        f"   server RSS before {mb(r['rss_before'])}, peak {mb(r['rss_peak'])} ({r['rss_peak_at_s']:.1f} s "
        f"in), {SETTLE:g} s after the last byte {mb(r['rss_after'])}"
    )


def report(results: dict[str, Any]) -> None:
    if (r := results.get("watcher")) is not None:
        verdict = "met" if r["rss_peak"] < RSS_TARGET else "MISSED"
        print(f"\n1a. stalled watcher (hello, then reads nothing, pings every {PING_INTERVAL:g} s)")
        print(_written_line(r))
        print(_rss_line(r) + f"   target < {mb(RSS_TARGET)}: {verdict}")
        print(_drop_line(r["watcher"]))
        if r["ping_error"]:
            print(f"   its pings stopped: {r['ping_error']}")
    if (r := results.get("suspend")) is not None:
        print("\n1b. watcher sends FLOWCONTROL-SUSPEND; a read-write holder reads everything")
        print(_written_line(r))
        intact = "all of it, SHA-256 equal" if r["holder_intact"] else "INCOMPLETE OR DIFFERENT"
        print(
            f"   holder received {r['holder_received'] / MiB:.1f} MiB ({intact}) in {r['holder_s']:.1f} s: "
            f"{r['holder_MB_per_s']:.1f} MB/s" + (f"  [{r['holder_error']}]" if r["holder_error"] else "")
        )
        print(_rss_line(r))
        print(_drop_line(r["watcher"]))
    if (r := results.get("flood")) is not None:
        print("\n2. legitimate handshake + hello, in network namespaces")
        if "skipped" in r:
            print(f"   skipped: {r['skipped']}")
        else:
            for key, label in (("baseline", "no flood"), ("flood", f"{r['connections']} flood connections")):
                x = r[key]
                figures = (
                    f"median {x['median_ms']:.1f} ms, p90 {x['p90_ms']:.1f} ms, max {x['max_ms']:.1f} ms"
                    if x["ok"]
                    else "no success"
                )
                print(f"   {label:>22}: {x['ok']}/{x['tries']} ok, {figures}")
                for error in sorted(set(x["errors"])):
                    print(f"   {'':>22}  {x['errors'].count(error)} x {error}")
            print(
                f"   flood: {r['connections']} connections from {r['sources']} addresses in "
                f"{r['flood_ready_s']:.1f} s; {r['server_tcp_connections_at_start']} established at the "
                "server when the legit run began"
            )
            accepted = r["server_accepted_during_legit"]
            print(
                f"   during the {r['legit_under_flood_s']:.1f} s legit run the server accepted {accepted} "
                f"connections ({accepted / r['legit_under_flood_s']:.0f}/s) and sent "
                f"{r['server_resets_sent_during_legit']} resets"
            )
            print(
                f"   server CPU {r['server_cpu_s_during_flood']:.1f} s in {r['flood_s']:.1f} s of flood "
                f"(attacker {r['attacker_cpu_s']:.1f} s), RSS {mb(r['server_rss_before'])} -> peak "
                f"{mb(r['server_rss_peak_during'])}, {r['server_log_lines']} log lines"
                + ("" if r["server_alive"] else "; SERVER DIED")
            )
    if (r := results.get("bursts")) is not None:
        print(
            f"\n3. {r['bursts']} bursts of {r['burst_size']} malformed connections from 32 loopback addresses"
        )
        print(f"   server RSS after a warm-up burst of {r['warmup']}: {mb(r['rss_before'])}")
        print("   after each burst: " + " ".join(f"{x / MB:.1f}" for x in r["rss_after_each"]) + " MB")
        grown = r["rss_after_each"][-1] - r["rss_before"] if r["rss_after_each"] else 0
        print(f"   growth {grown / MB:+.1f} MB; bursts took {statistics.median(r['burst_s']):.2f} s (median)")
        print(
            f"   server log: {r['log_lines']} lines ({r['log_lines_naming_sources']} naming a 127.0.0.x "
            f"source) in {r['elapsed_s']:.1f} s for "
            f"{r['warmup'] + r['bursts'] * r['burst_size']} bad connections; then "
            f"{r['summary_lines_after']} summary lines by {r['summary_wait_s']:g} s after the first burst"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--device-mib", type=int, default=150, help="device output per watcher run (150)")
    parser.add_argument("--tries", type=int, default=20, help="legitimate handshakes per flood run (20)")
    parser.add_argument("--bursts", type=int, default=10, help="bursts of malformed connections (10)")
    parser.add_argument("--burst-size", type=int, default=500, help="connections per burst (500)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only this part (repeatable)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    if min(args.device_mib, args.tries, args.bursts, args.burst_size) < 1:
        parser.error("--device-mib, --tries, --bursts and --burst-size must be positive")
    chosen = [s for s in SCENARIOS if s in (args.only or SCENARIOS)]
    total = args.device_mib * MiB
    timeout = 60 + args.device_mib  # at least 1 MiB/s, whatever the server does
    print(f"CPUs: {os.cpu_count()}   Python {platform.python_version()}   {platform.platform()}")
    runs = {
        "watcher": lambda: watcher_scenario(total, timeout),
        "suspend": lambda: suspend_scenario(total, timeout),
        "flood": lambda: flood_scenario(args.tries),
        "bursts": lambda: bursts_scenario(args.bursts, args.burst_size),
    }
    results: dict[str, Any] = {}
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = runs[name]()
    report(results)
    if args.json is not None:
        document = {"cpu_count": os.cpu_count(), "python": platform.python_version(), "results": results}
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
