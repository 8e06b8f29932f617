"""Tell the network about a running ``share``: mDNS adverts per interface, and a rendezvous record.

Theory of operation
-------------------
:class:`Publisher` runs as one task next to the listener, started only once the listener is up, so
advertising never delays serving. Everything it does is best effort: a failure to advertise or register
is logged as a warning (once per reason) and retried later, never raised.

* **mDNS**: one :class:`~meshserial.discovery.mdns.Advertiser` on the chosen interfaces (``--interface``
  globs, or every up, non-loopback, multicast interface; loopback only when the listener is bound to
  loopback). The interface list is checked again every ``rescan_interval`` seconds: a ZeroTier port
  that comes up after ``share`` (usual at boot) gets adverts, one that goes away gets none.
* **rendezvous**: a :class:`~meshserial.discovery.rendezvous.Registrar` publishes the ports and the
  addresses a client can use: the listen address, or every non-loopback interface address when the
  listener is on the wildcard address (overlay addresses included).
* **state**: every :class:`~meshserial.net.sharing.SharedPort` reports changes (a session took or
  released it, the device was lost or came back). The mDNS TXT is updated at once (the Advertiser
  coalesces bursts); the rendezvous record after ``debounce`` seconds, since its writes are rate-limited.

On cancellation the adverts say goodbye and the record is withdrawn (both bounded in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshserial.addresses import format_hostport, is_loopback
from meshserial.discovery import mdns
from meshserial.discovery.overlay import (
    Interface,
    is_container_plumbing,
    list_interfaces,
    loopback_interface,
    select_interfaces,
)
from meshserial.discovery.txt import printable
from meshserial.errors import MeshserialError
from meshserial.keys import Identity
from meshserial.net.sharing import SharedPort
from meshserial.ports.factory import SIM_PREFIX, describe_device
from meshserial.proto.records import MAX_ADDRESSES, MAX_DEVICE_LEN, PortInfo, PortState

if TYPE_CHECKING:
    from meshserial.discovery.rendezvous import Registrar

log = logging.getLogger(__name__)

RIGHTS_HINT = "auth"  # every session needs an authorized key; per-port rights are not advertised
RESCAN_INTERVAL = 30.0
DEBOUNCE = 1.0
SETTLE_TIMEOUT = 15.0
REQUEST_TIMEOUT = 5.0
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishConfig:
    """What ``share`` tells the network, and where."""

    mdns: bool = True
    interfaces: tuple[str, ...] = ()  # names or globs; empty: the default choice
    rendezvous: str | None = None  # base URL of a rendezvous service
    rendezvous_token: str | None = None  # bearer token for writes (never logged)
    rescan_interval: float = RESCAN_INTERVAL
    debounce: float = DEBOUNCE


def describe(spec: str) -> dict[str, str]:
    """TXT device keys (``vid``, ``pid``, ``serial``, ``mfr``, ``product``, ``desc``) for a device spec."""
    if spec.startswith(SIM_PREFIX):
        return {"desc": f"simulated {spec[len(SIM_PREFIX) :]} device"}
    info = describe_device(spec)
    out: dict[str, str] = {}
    vid, _, pid = info.get("vid:pid", "").partition(":")
    if vid and pid:
        out["vid"], out["pid"] = vid, pid
    for theirs, ours in (
        ("serial_number", "serial"),
        ("manufacturer", "mfr"),
        ("product", "product"),
        ("description", "desc"),
    ):
        if info.get(theirs):
            out[ours] = info[theirs]
    return out or {"desc": spec}


def record_device(spec: str, device: dict[str, str]) -> str:
    """The ``device`` string of a rendezvous record: the summary, else the spec.

    The strings come from the device itself (USB descriptors), so they are cleaned the way our TXT
    values are (:func:`~meshserial.discovery.txt.printable`) before anyone else gets to print them.
    """
    text = printable(mdns.device_summary(device) or spec)
    return " ".join(text.split())[:MAX_DEVICE_LEN]


class _Warnings:
    """Warn once per problem (a key) and message; a cleared problem may warn again later."""

    def __init__(self) -> None:
        self._active: dict[str, str] = {}

    def warn(self, key: str, message: str) -> None:
        if self._active.get(key) != message:
            self._active[key] = message
            log.warning("%s", message)

    def clear(self, key: str) -> None:
        self._active.pop(key, None)


class Publisher:
    """Advertises ``ports`` (served on ``host``:``tcp_port`` as ``identity``) until cancelled."""

    def __init__(
        self,
        ports: list[SharedPort],
        specs: dict[str, str],
        identity: Identity,
        *,
        host: str,
        tcp_port: int,
        config: PublishConfig,
        announce: Callable[[str], None] = lambda line: None,
        interfaces: Callable[[], list[Interface]] = list_interfaces,
    ) -> None:
        self._ports = ports
        self._specs = specs
        self._identity = identity
        self._host = host
        self._tcp_port = tcp_port
        self._config = config
        self._announce = announce
        self._list_interfaces = interfaces
        self._devices: dict[str, dict[str, str]] = {}
        self._warnings = _Warnings()
        self._mdns_dirty: set[str] = set()
        self._mdns_wake = asyncio.Event()
        self._rdv_wake = asyncio.Event()

    # ---- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Advertise and register until cancelled; returns only when there is nothing to do.

        Never raises (but for cancellation): the server must go on serving whatever happens here.
        """
        try:
            await self._run()
        except Exception as exc:
            log.warning("advertising stopped: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))

    async def _run(self) -> None:
        if not (self._config.mdns or self._config.rendezvous):
            return
        specs = dict(self._specs)
        self._devices = await asyncio.to_thread(lambda: {n: describe(s) for n, s in specs.items()})
        for port in self._ports:
            port.observe(self._changed)
        async with asyncio.TaskGroup() as tasks:
            if self._config.mdns:
                tasks.create_task(self._mdns_loop())
            if self._config.rendezvous:
                tasks.create_task(self._rendezvous_loop(self._config.rendezvous))

    def _changed(self, port: SharedPort) -> None:
        self._mdns_dirty.add(port.name)
        self._mdns_wake.set()
        self._rdv_wake.set()

    async def _interfaces(self) -> list[Interface]:
        try:
            return await asyncio.to_thread(self._list_interfaces)
        except (OSError, MeshserialError) as exc:
            self._warnings.warn("ifaces", f"cannot list network interfaces: {exc}")
            return []

    # ---- mDNS ----------------------------------------------------------------------------------

    async def mdns_interfaces(self) -> list[Interface]:
        """Where to advertise now (see the module docstring); [] with a warning when nowhere."""
        patterns = list(self._config.interfaces)
        if not patterns and is_loopback(self._host):
            return [loopback_interface()]
        available = await self._interfaces()
        try:
            chosen = select_interfaces(patterns or None, available=available)
        except MeshserialError as exc:
            self._warnings.warn("mdns-select", f"not advertising by mDNS: {exc}")
            return []
        if self._host not in _WILDCARDS:
            chosen = [i for i in chosen if self._host in i.addresses]
        if not chosen:
            where = f" with address {self._host}" if self._host not in _WILDCARDS else ""
            self._warnings.warn("mdns-select", f"not advertising by mDNS: no usable interface{where}")
        else:
            self._warnings.clear("mdns-select")
        return chosen

    def _ad(self, port: SharedPort) -> mdns.ServiceAd:
        holder = port.holder
        return mdns.ServiceAd(
            name=port.name,
            port=0,
            server_id=self._identity.id_string,
            state=port.state,
            rights=RIGHTS_HINT,
            device=dict(self._devices.get(port.name, {})),
            holder=holder.label if holder is not None and port.state == "in-use" else None,
        )

    async def _start_advertiser(self, interfaces: list[Interface]) -> mdns.Advertiser | None:
        advertiser = mdns.Advertiser(
            interfaces=interfaces,
            host_label="ms-" + self._identity.id_string[3:15],
            tcp_port=self._tcp_port,
        )
        try:
            await advertiser.start()
            for port in self._ports:
                await advertiser.add(self._ad(port))
        except MeshserialError as exc:
            await advertiser.aclose()
            self._warnings.warn("mdns", f"not advertising by mDNS: {exc}")
            return None
        self._mdns_dirty.clear()
        if await advertiser.wait_settled(SETTLE_TIMEOUT):
            self._warnings.clear("mdns")
            names = ", ".join(p.name for p in self._ports)
            links = ", ".join(i.label for i in advertiser.interfaces)
            self._announce(f"advertising {names} on {links} (mDNS)")
        else:
            self._warnings.warn("mdns", "mDNS adverts are slow to go out; still trying")
        return advertiser

    async def _mdns_loop(self) -> None:
        advertiser: mdns.Advertiser | None = None
        current: tuple[tuple[str, tuple[str, ...]], ...] | None = None
        loop = asyncio.get_running_loop()
        next_scan = loop.time()
        try:
            while True:
                if loop.time() >= next_scan:
                    interfaces = await self.mdns_interfaces()
                    wanted = tuple((i.name, i.ipv4) for i in interfaces)
                    if wanted != current:
                        if advertiser is not None:
                            await advertiser.aclose()  # goodbyes on the links we leave
                            advertiser = None
                        current = wanted
                        if interfaces:
                            advertiser = await self._start_advertiser(interfaces)
                            if advertiser is None:
                                current = None  # try again at the next scan
                    next_scan = loop.time() + self._config.rescan_interval
                if advertiser is not None:
                    for name in sorted(self._mdns_dirty):
                        port = next(p for p in self._ports if p.name == name)
                        ad = self._ad(port)
                        log.debug("mDNS: %s is %s now", name, ad.state)
                        await advertiser.update(name, state=ad.state, holder=ad.holder)
                self._mdns_dirty.clear()
                self._mdns_wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_scan - loop.time())):
                        await self._mdns_wake.wait()
        finally:
            if advertiser is not None:
                await advertiser.aclose()

    # ---- rendezvous ----------------------------------------------------------------------------

    def port_infos(self) -> list[PortInfo]:
        """The ports as a rendezvous record lists them."""
        return [
            PortInfo(
                name=p.name,
                device=record_device(self._specs.get(p.name, ""), self._devices.get(p.name, {})),
                state=PortState(p.state),
            )
            for p in self._ports
        ]

    async def record_addresses(self) -> list[str]:
        """``ip:port`` strings a client may use: the listen address, or every interface address."""
        port = self._tcp_port
        host = self._host
        if host not in _WILDCARDS:
            if is_loopback(host) and not _is_ip(host):
                host = "127.0.0.1"
            if not _is_ip(host):
                try:
                    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    self._warnings.warn("rdv-addr", f"cannot resolve {host}: {exc}")
                    return []
                hosts = list(dict.fromkeys(str(info[4][0]) for info in infos))
            else:
                hosts = [host]
            return [format_hostport(h, port) for h in hosts][:MAX_ADDRESSES]
        out: list[str] = []
        for iface in await self._interfaces():
            if iface.is_loopback or not iface.is_up or is_container_plumbing(iface.name):
                continue
            for address in iface.addresses:
                ip = ipaddress.ip_address(address.split("%")[0])
                if ip.version == 6 and (host != "::" or ip.is_link_local):
                    continue
                out.append(format_hostport(str(ip), port))
        return out[:MAX_ADDRESSES]

    async def _rendezvous_loop(self, url: str) -> None:
        from meshserial.discovery.rendezvous import Registrar  # noqa: PLC0415 - aiohttp only when used

        addresses = await self.record_addresses()
        try:
            registrar = Registrar(
                url,
                self._identity.signing_key,
                ports=self.port_infos(),
                addresses=addresses,
                token=self._config.rendezvous_token,
                request_timeout=REQUEST_TIMEOUT,
            )
        except MeshserialError as exc:
            log.warning("not registering with rendezvous %s: %s", url, exc)
            return
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tasks:
            registrar.start(tasks)
            tasks.create_task(self._report_registered(registrar, url))
            try:
                next_scan = loop.time() + self._config.rescan_interval
                found = addresses
                published: tuple[list[PortInfo], list[str]] = (self.port_infos(), addresses)
                while True:
                    self._rdv_wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, next_scan - loop.time())):
                            await self._rdv_wake.wait()
                            await asyncio.sleep(self._config.debounce)  # coalesce a burst of changes
                    if loop.time() >= next_scan:
                        next_scan = loop.time() + self._config.rescan_interval
                        found = await self.record_addresses()
                    ports = self.port_infos()
                    if (ports, found) == published:
                        continue
                    try:
                        registrar.update(ports=ports, addresses=found)
                        published = (ports, found)
                    except MeshserialError as exc:
                        self._warnings.warn("rdv-update", f"rendezvous record not updated: {exc}")
            finally:
                await registrar.aclose()  # withdraws the record (bounded by REQUEST_TIMEOUT)

    async def _report_registered(self, registrar: Registrar, url: str) -> None:
        with contextlib.suppress(TimeoutError):
            await registrar.wait_until(lambda r: r.registered_seq is not None, timeout=3600)
            names = ", ".join(p.name for p in self._ports)
            self._announce(f"registered {names} with rendezvous {url}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
