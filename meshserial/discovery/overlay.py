"""Network interfaces as discovery sees them, with ZeroTier recognised.

mDNS is link-local: an advert only reaches the link it is sent on. meshserial therefore works per
interface, and this module answers "which interfaces are there, which of them are overlay links, and
which ones did the user ask for".

* Addresses come from ``ifaddr`` (a zeroconf dependency); flags (up, loopback, multicast) from
  ``/sys/class/net/<name>/flags`` where that exists, otherwise from the addresses themselves.
* ZeroTier ports are recognised by name (``zt*`` on Linux, ``feth*`` on macOS) and, when the local
  ZeroTier One service answers on ``127.0.0.1:9993`` and its auth token is readable, by the service's
  own ``portDeviceName``; the service also gives each port its network id and name. Everything about
  the ZeroTier service is optional: no token, no service, or a garbled answer just means "no names".
* Interface selection is deliberately dumb: names and shell-style globs, nothing else.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import ifaddr

from meshserial.errors import UsageError
from meshserial.proto.text import escape

log = logging.getLogger(__name__)

OverlayKind = Literal["zerotier"]

# Linux <linux/if.h> flag bits, as exported in /sys/class/net/*/flags.
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_MULTICAST = 0x1000

# Names never picked by default: container plumbing floods mDNS between containers (python-zeroconf
# issue #330) and is not where users expect their serial ports to show up. Explicit patterns still work.
_DEFAULT_EXCLUDED = ("docker*", "br-*", "veth*", "virbr*", "cni*", "flannel*")

ZEROTIER_API_PORT = 9993
_ZT_MAX_RESPONSE = 1 << 20  # the /network answer is a few KB per network; refuse anything absurd


@dataclass(frozen=True, slots=True, kw_only=True)
class Interface:
    """One local network interface.

    ``addresses`` holds IPv4 addresses and IPv6 addresses; link-local IPv6 ones carry their scope
    (``fe80::1%zt3a1``). ``overlay`` is ``"zerotier"`` for ZeroTier ports; ``network_id`` and
    ``network_name`` are filled in only when the local ZeroTier service told us.
    """

    name: str
    addresses: tuple[str, ...] = ()
    index: int | None = None
    is_loopback: bool = False
    is_up: bool = True
    multicast: bool = True
    overlay: OverlayKind | None = None
    network_id: str | None = None
    network_name: str | None = None
    networks: tuple[str, ...] = ()  # the subnets of ``addresses`` (CIDR), where known

    @property
    def ipv4(self) -> tuple[str, ...]:
        """The IPv4 addresses, in the order ifaddr reported them."""
        return tuple(a for a in self.addresses if ":" not in a)

    @property
    def ipv6(self) -> tuple[str, ...]:
        """The IPv6 addresses (scoped when link-local)."""
        return tuple(a for a in self.addresses if ":" in a)

    @property
    def label(self) -> str:
        """Name for humans: ``zt3a1`` or, when the ZeroTier network name is known, ``zt3a1(My Net)``."""
        if self.network_name:
            # The network's controller names it, not this machine: escaped like any peer's text.
            return f"{self.name}({escape(self.network_name)})"
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroTierNetwork:
    """One network the local ZeroTier One service has joined (from ``GET /network``)."""

    network_id: str
    name: str
    device: str
    status: str
    addresses: tuple[str, ...]


def loopback_interface() -> Interface:
    """An IPv4 loopback interface (127.0.0.1), for tests and single-host use."""
    return Interface(name="lo", addresses=("127.0.0.1",), is_loopback=True, multicast=True)


def is_zerotier_name(name: str, platform: str | None = None) -> bool:
    """Whether an interface name looks like a ZeroTier port on this platform."""
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return name.startswith("feth")
    if platform == "win32":
        return name.startswith("ZeroTier One")
    return name.startswith("zt")


def _linux_flags(name: str) -> int | None:
    try:
        text = Path("/sys/class/net", name, "flags").read_text(encoding="ascii")
        return int(text.strip(), 16)
    except (OSError, ValueError):
        return None


def _format_ip(ip: ifaddr.IP) -> str | None:
    if isinstance(ip.ip, str):
        return ip.ip
    addr, _flowinfo, scope_id = ip.ip
    try:
        parsed = ipaddress.IPv6Address(addr)
    except ValueError:
        return None
    if parsed.is_link_local and scope_id:
        return f"{addr}%{ip.nice_name}"
    return addr


def list_interfaces(*, zerotier: bool = True) -> list[Interface]:
    """Every local interface with at least one address, ZeroTier ports annotated.

    With ``zerotier=True`` the local ZeroTier One API is asked (short timeout) for network ids and
    names; when that fails the name heuristic alone decides what is a ZeroTier port.
    """
    interfaces: list[Interface] = []
    for adapter in ifaddr.get_adapters():
        addresses: list[str] = []
        networks: list[str] = []
        for ip in adapter.ips:
            text = _format_ip(ip)
            if text is None or text in addresses:
                continue
            addresses.append(text)
            with contextlib.suppress(ValueError):
                networks.append(
                    str(ipaddress.ip_interface(f"{text.split('%')[0]}/{ip.network_prefix}").network)
                )
        if not addresses:
            continue
        name = adapter.nice_name
        flags = _linux_flags(name)
        all_loopback = all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
        interfaces.append(
            Interface(
                name=name,
                addresses=tuple(addresses),
                index=adapter.index,
                is_loopback=bool(flags & _IFF_LOOPBACK) if flags is not None else all_loopback,
                is_up=bool(flags & _IFF_UP) if flags is not None else True,
                multicast=bool(flags & _IFF_MULTICAST) if flags is not None else True,
                overlay="zerotier" if is_zerotier_name(name) else None,
                networks=tuple(networks),
            )
        )
    if zerotier:
        token = read_zerotier_token()
        if token is not None:
            interfaces = annotate_zerotier(interfaces, query_zerotier(token=token))
    return interfaces


def annotate_zerotier(interfaces: list[Interface], networks: Iterable[ZeroTierNetwork]) -> list[Interface]:
    """Attach ZeroTier network ids/names, matching by device name, else by an assigned address."""
    by_device: dict[str, ZeroTierNetwork] = {}
    by_address: dict[str, ZeroTierNetwork] = {}
    for network in networks:
        if network.device:
            by_device[network.device] = network
        for addr in network.addresses:
            by_address[addr] = network
    result: list[Interface] = []
    for iface in interfaces:
        net = by_device.get(iface.name)
        if net is None:
            net = next((by_address[a] for a in iface.addresses if a in by_address), None)
        if net is None:
            result.append(iface)
        else:
            result.append(
                replace(iface, overlay="zerotier", network_id=net.network_id, network_name=net.name or None)
            )
    return result


def _zerotier_homes() -> list[Path]:
    if sys.platform == "darwin":
        return [Path("/Library/Application Support/ZeroTier/One")]
    if sys.platform == "win32":
        return [Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData"), "ZeroTier", "One")]
    if sys.platform.startswith("freebsd"):
        return [Path("/var/db/zerotier-one")]
    return [Path("/var/lib/zerotier-one")]


def read_zerotier_token(paths: Iterable[Path] | None = None) -> str | None:
    """The ZeroTier One API token, or None when no token file is readable (the usual non-root case)."""
    if paths is None:
        home = Path.home()
        paths = [
            *(h / "authtoken.secret" for h in _zerotier_homes()),
            home / ".zeroTierOneAuthToken",
            home / "Library/Application Support/ZeroTier/One/authtoken.secret",
        ]
    for path in paths:
        try:
            token = path.read_text(encoding="ascii", errors="strict").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if token and len(token) <= 256:
            return token
    return None


def _zerotier_port() -> int:
    for home in _zerotier_homes():
        try:
            port = int((home / "zerotier-one.port").read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if 0 < port < 65536:
            return port
    return ZEROTIER_API_PORT


def query_zerotier(*, token: str, base_url: str | None = None, timeout: float = 0.5) -> list[ZeroTierNetwork]:
    """Ask the local ZeroTier One service which networks it has joined; [] on any failure.

    Blocking (urllib), bounded by ``timeout``; the service is on loopback so a healthy answer takes
    milliseconds and an absent service is refused at once.
    """
    url = (base_url or f"http://127.0.0.1:{_zerotier_port()}") + "/network"
    request = urllib.request.Request(url, headers={"X-ZT1-Auth": token})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(_ZT_MAX_RESPONSE + 1)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        log.debug("ZeroTier API not available at %s: %s", url, exc)
        return []
    if len(body) > _ZT_MAX_RESPONSE:
        log.info("ZeroTier API answer too large; ignored")
        return []
    try:
        data = json.loads(body)
    except ValueError:
        log.info("ZeroTier API answered with something that is not JSON; ignored")
        return []
    return parse_zerotier_networks(data)


def parse_zerotier_networks(data: object) -> list[ZeroTierNetwork]:
    """Parse a ``GET /network`` answer, skipping entries that do not look right."""
    if not isinstance(data, list):
        return []
    networks: list[ZeroTierNetwork] = []
    for entry in data:
        if not isinstance(entry, Mapping):
            continue
        nwid = entry.get("nwid") or entry.get("id")
        if not isinstance(nwid, str) or not nwid:
            continue
        name = entry.get("name")
        device = entry.get("portDeviceName")
        status = entry.get("status")
        raw_addrs = entry.get("assignedAddresses")
        addrs = (
            tuple(a.split("/")[0] for a in raw_addrs if isinstance(a, str))
            if isinstance(raw_addrs, list)
            else ()
        )
        networks.append(
            ZeroTierNetwork(
                network_id=nwid[:16],
                name=name[:64] if isinstance(name, str) else "",
                device=device if isinstance(device, str) else "",
                status=status if isinstance(status, str) else "",
                addresses=addrs,
            )
        )
    return networks


def _default_choice(iface: Interface) -> bool:
    return (
        iface.is_up
        and not iface.is_loopback
        and iface.multicast
        and bool(iface.ipv4)
        and not any(fnmatch.fnmatchcase(iface.name, p) for p in _DEFAULT_EXCLUDED)
    )


def select_interfaces(
    patterns: list[str] | None, *, available: list[Interface] | None = None
) -> list[Interface]:
    """The interfaces discovery should use.

    ``patterns`` are interface names or shell globs (``zt*``, ``eth0``). Without patterns: every
    interface that is up, not loopback, multicast-capable, has an IPv4 address and is not container
    plumbing (``docker*``, ``veth*``, ``br-*`` …). With patterns: every interface with an address that
    matches one of them, loopback included (``lo`` is how tests run). A pattern that matches nothing
    raises :class:`~meshserial.errors.UsageError` naming what is available.

    ``available`` replaces the live interface list (tests).
    """
    interfaces = list_interfaces() if available is None else available
    if not patterns:
        return [i for i in interfaces if _default_choice(i)]
    chosen: list[Interface] = []
    unmatched: list[str] = []
    for pattern in patterns:
        hits = [i for i in interfaces if fnmatch.fnmatchcase(i.name, pattern)]
        if not hits:
            unmatched.append(pattern)
        chosen.extend(h for h in hits if h not in chosen)
    if unmatched:
        names = ", ".join(sorted(i.name for i in interfaces)) or "none"
        raise UsageError(f"no interface matches {', '.join(map(repr, unmatched))} (available: {names})")
    return chosen


def is_container_plumbing(name: str) -> bool:
    """Interfaces that link containers and VMs on this host (``docker*``, ``veth*`` …), not networks."""
    return any(fnmatch.fnmatchcase(name, p) for p in _DEFAULT_EXCLUDED)


def address_rank(address: str, interfaces: list[Interface]) -> int:
    """How to order an ``ip:port`` when connecting: 0 on a local LAN subnet, 1 on an overlay subnet
    (ZeroTier), 2 anywhere else (routed, or unknown). Lower is tried first."""
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]").split("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return 2
    best = 2
    for iface in interfaces:
        for net in iface.networks:
            try:
                if ip in ipaddress.ip_network(net):
                    best = min(best, 1 if iface.overlay else 0)
            except ValueError:
                continue
    return best
