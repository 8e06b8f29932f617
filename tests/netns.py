"""Network-namespace test harness: private "hosts", links and LANs for mDNS and fault tests.

Usage::

    with Netns() as net:                       # or the ``netns`` pytest fixture
        lan = net.bridge("lan")                # a switch: a namespace holding a Linux bridge
        a, b = net.host("a"), net.host("b")    # empty namespaces, loopback up
        net.attach(a, lan, ifname="eth0", address="198.18.1.1/24")
        net.attach(b, lan, ifname="eth0", address="198.18.1.2/24")
        net.link(a, b, ifname="zt0", peer_ifname="zt0", address="198.18.9.1/24", peer_address="198.18.9.2/24")
        net.run(a, ["ping", "-c1", "198.18.1.2"])
        proc = net.popen(b, [sys.executable, "-c", "…"])   # stopped by PID on exit

Every name it creates starts with ``mst-<pid>-``; everything is deleted on exit (namespaces take their
veths with them; processes started here are killed by PID). Addresses must come from 198.18.0.0/15
(RFC 2544 benchmarking space). Links are ``multicast on up`` and each host gets a 224.0.0.0/4 route via
its first link, without which a namespace with no default route cannot send mDNS at all.

``require_netns()`` skips the test when not root or ``ip netns`` is unusable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

_ALLOWED = ipaddress.IPv4Network("198.18.0.0/15")
_counter = itertools.count(1)


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    name = f"mst-{os.getpid()}-probe{next(_counter)}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` does not work here: {exc}"
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=10)
    return None


def require_netns() -> None:
    """Skip the calling test when namespaces are unavailable."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


@dataclass
class Bridge:
    """A switch: namespace ``ns`` holding bridge ``br0``; links attach to it."""

    ns: str
    ports: int = 0


@dataclass
class Netns:
    """Creates namespaces, veth links and bridges; deletes all of it on exit."""

    prefix: str = field(default_factory=lambda: f"mst-{os.getpid()}-")
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _routed: set[str] = field(default_factory=set)

    def __enter__(self) -> Netns:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- topology -------------------------------------------------------------------------------

    def host(self, label: str = "h") -> str:
        """A new empty namespace with loopback up; returns its name."""
        name = f"{self.prefix}{next(_counter)}{label}"[:48]
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def bridge(self, label: str = "br") -> Bridge:
        """A new switch (a namespace with bridge ``br0``, multicast snooping off so mDNS floods)."""
        ns = self.host(label)
        _ip("-n", ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", ns, "link", "set", "br0", "multicast", "on", "up")
        return Bridge(ns)

    def attach(self, ns: str, bridge: Bridge, *, ifname: str, address: str) -> None:
        """Plug host ``ns`` into ``bridge`` with an interface ``ifname`` carrying ``address`` (CIDR)."""
        bridge.ports += 1
        port = f"p{bridge.ports}"
        self._veth(ns, ifname, bridge.ns, port)
        _ip("-n", bridge.ns, "link", "set", port, "master", "br0")
        _ip("-n", bridge.ns, "link", "set", port, "multicast", "on", "up")
        self._configure(ns, ifname, address)

    def link(
        self, ns: str, peer: str, *, ifname: str, peer_ifname: str, address: str, peer_address: str
    ) -> None:
        """A point-to-point veth between two hosts."""
        self._veth(ns, ifname, peer, peer_ifname)
        self._configure(ns, ifname, address)
        self._configure(peer, peer_ifname, peer_address)

    def rename(self, ns: str, old: str, new: str) -> None:
        """Rename an interface inside ``ns`` (it is briefly taken down)."""
        _ip("-n", ns, "link", "set", old, "down")
        _ip("-n", ns, "link", "set", old, "name", new)
        _ip("-n", ns, "link", "set", new, "multicast", "on", "up")

    def _veth(self, ns: str, ifname: str, peer_ns: str, peer_ifname: str) -> None:
        if len(ifname) > 15 or len(peer_ifname) > 15:
            raise ValueError("interface names are at most 15 characters")
        _ip("-n", ns, "link", "add", ifname, "type", "veth", "peer", "name", peer_ifname, "netns", peer_ns)

    def _configure(self, ns: str, ifname: str, address: str) -> None:
        network = ipaddress.ip_interface(address).network
        if not isinstance(network, ipaddress.IPv4Network) or not network.subnet_of(_ALLOWED):
            raise ValueError(f"{address} is outside 198.18.0.0/15")
        _ip("-n", ns, "addr", "add", address, "dev", ifname)
        _ip("-n", ns, "link", "set", ifname, "multicast", "on", "up")
        if ns not in self._routed:
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", ifname)
            self._routed.add(ns)

    # -- processes ------------------------------------------------------------------------------

    def run(
        self, ns: str, argv: Sequence[str], *, timeout: float = 30, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` to completion (text output captured)."""
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            **kwargs,
        )

    def popen(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``ns``; ``ip netns exec`` execs, so the PID is the program's own."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", ns, *argv], **kwargs
        )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        """SIGTERM the process by PID, SIGKILL after ``timeout``; returns its exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()
        return proc.returncode

    def close(self) -> None:
        """Stop every process started here, then delete every namespace created here."""
        for proc in reversed(self.processes):
            self.stop(proc, timeout=3)
        self.processes.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
        self.namespaces.clear()


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh :class:`Netns`, skipped without root; cleaned up after the test."""
    require_netns()
    with Netns() as net:
        yield net


# -- avahi as an independent mDNS peer -----------------------------------------------------------

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={socket}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_type="method_call"/>
<allow send_destination="*"/><allow receive_sender="*"/></policy></busconfig>
"""

_AVAHI_CONFIG = """[server]
use-ipv6=no
allow-interfaces={ifname}
enable-dbus=yes
[publish]
disable-publishing=yes
"""


def avahi_unavailable() -> str | None:
    """Why an avahi peer cannot be started here, or None."""
    for tool in ("avahi-daemon", "avahi-browse", "dbus-daemon", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@dataclass
class Avahi:
    """avahi-daemon with a private D-Bus system bus inside one namespace (browse only)."""

    net: Netns
    ns: str
    env: dict[str, str]
    bus: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes]

    def browse(self, service_type: str, timeout: float = 8.0) -> list[list[str]]:
        """``avahi-browse -rtp`` resolved lines (``=;iface;IPv4;name;type;domain;host;addr;port;txt``)."""
        result = self.net.run(
            self.ns,
            ["avahi-browse", "-rtp", service_type],
            env=self.env,
            timeout=timeout + 5,
            check=False,
        )
        return [line.split(";", 9) for line in result.stdout.splitlines() if line.startswith("=")]

    def stop(self) -> None:
        self.net.stop(self.daemon)
        self.net.stop(self.bus)


def start_avahi(
    net: Netns, ns: str, *, ifname: str, workdir: Path | None = None, timeout: float = 10
) -> Avahi:
    """Start dbus-daemon and avahi-daemon in ``ns`` (avahi watching ``ifname`` only).

    avahi-daemon runs in the foreground in a private mount namespace with its own tmpfs on /run, so
    its pid file and socket never meet a system avahi; both daemons are stopped by PID.
    """
    tmp = Path(workdir or tempfile.mkdtemp(prefix="mst-avahi-"))
    socket_path = tmp / "bus"
    (tmp / "bus.conf").write_text(_BUS_CONFIG.format(socket=socket_path), encoding="utf-8")
    (tmp / "avahi.conf").write_text(_AVAHI_CONFIG.format(ifname=ifname), encoding="utf-8")
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={socket_path}")
    bus = net.popen(ns, ["dbus-daemon", f"--config-file={tmp / 'bus.conf'}", "--nofork", "--nopidfile"])
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if time.monotonic() > deadline or bus.poll() is not None:
            raise RuntimeError("private dbus-daemon did not start")
        time.sleep(0.02)
    script = 'mount -t tmpfs tmpfs /run && exec "$@"'
    daemon = net.popen(
        ns,
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", "avahi-daemon",
         "-f", str(tmp / "avahi.conf"), "--no-drop-root", "--no-chroot", "--no-rlimits"],
        env=env,
    )  # fmt: skip
    while True:  # ready once it answers on the bus
        probe = net.run(ns, ["avahi-browse", "-t", "-p", "_probe._tcp"], env=env, timeout=5, check=False)
        if probe.returncode == 0:
            break
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise RuntimeError(f"avahi-daemon did not start: {probe.stderr.strip()}")
        time.sleep(0.05)
    return Avahi(net, ns, env, bus, daemon)
