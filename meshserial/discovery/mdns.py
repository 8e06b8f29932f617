"""mDNS / DNS-SD adverts and browsing for meshserial (and ser2net) ports.

Theory of operation
-------------------
Every shared port is one DNS-SD service of type ``_meshserial._tcp``. mDNS is link-local, so both the
:class:`Advertiser` and the :class:`Browser` run one ``AsyncZeroconf`` per selected interface, bound
to that interface's IPv4 addresses only. That is what keeps a LAN address from being advertised on a
ZeroTier link (and the reverse), and what lets the browser say *via which link* it saw a server. On
Linux each instance's mDNS listening socket is also bound to its device: the sockets all share
0.0.0.0:5353, and otherwise a LAN instance could take, and answer by unicast, a query that arrived on
the overlay.

Adverts are hints. Anyone on the link can send one; identity is proven only by the handshake against
a pinned key. A server that crashed without a goodbye stays in every python-zeroconf cache for up to
~19 minutes (the PTR TTL floor), hence :func:`probe`.

The TXT schema and the :class:`Discovered` shape are documented in
:mod:`meshserial.discovery.txt`; everything there is re-exported here.

What is deliberately not done: IPv6 adverts (IPv4 per link is enough on LANs and ZeroTier, and ``::1``
does not work for tests), and wide-area (unicast) DNS-SD.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from zeroconf import BadTypeInNameException, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshserial.discovery.overlay import Interface
from meshserial.discovery.txt import (
    DEVICE_KEYS,
    MAX_INCOMING_TXT,
    MAX_TXT_STRING,
    MAX_TXT_TOTAL,
    SER2NET_TYPE,
    SERVICE_TYPE,
    STATES,
    TXT_VERSION,
    Discovered,
    Kind,
    MalformedAdvert,
    ServiceAd,
    build_txt,
    cut_utf8,
    device_summary,
    merge,
    parse_service,
    printable,
    txt_size,
)
from meshserial.discovery.zc import (
    check_interface,
    open_zeroconf,
    refresh_queued_answers,
    send_qm_query,
)
from meshserial.errors import NetworkError, UsageError
from meshserial.logonce import LogOnce
from meshserial.proto.text import escape

__all__ = [
    "DEVICE_KEYS", "MAX_TXT_STRING", "MAX_TXT_TOTAL", "SER2NET_TYPE", "SERVICE_TYPE", "STATES", "TXT_VERSION",
    "UNSET", "Advertiser", "BrowseEvent", "Browser", "Discovered", "Kind", "MalformedAdvert", "ServiceAd",
    "browse", "build_txt", "check_interface", "device_summary", "merge", "parse_service", "probe", "txt_size",
]  # fmt: skip

log = logging.getLogger(__name__)


_MAX_ENTRIES = 4096  # distinct services kept by one Browser
_OTHER_TTL = 1125  # PTR/SRV/TXT; python-zeroconf browsers clamp lower values up to this anyway
_FIRST_ANSWER_WINDOW = 0.6  # s: first query goes out after 20-120 ms, shared answers wait 20-120 ms more
# On loopback every peer shares the browser's address, so an answer can take a second (see below).
_FIRST_ANSWER_WINDOW_LOOPBACK = 1.3
_RESOLVE_TIMEOUT = 3.0


# ----------------------------------------------------------------------------------------- helpers


class _Tasks:
    """An asyncio.TaskGroup kept open between start() and aclose(), for objects with that lifecycle.

    Children must not raise (they are wrapped to log), so one failure never tears the others down.
    aclose() cancels whatever is still running and waits for it.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._group: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(ready), name=f"meshserial {self._what}")
        await ready

    async def _run(self, ready: asyncio.Future[None]) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            ready.set_result(None)
            await asyncio.Event().wait()  # until cancelled by aclose()

    def spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        if self._group is None or self._closing:
            coro.close()
            return
        self._group.create_task(self._guard(coro, what))

    async def _guard(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await coro
        except Exception:
            log.warning("%s: %s failed", self._what, what, exc_info=True)

    async def aclose(self) -> None:
        self._closing = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait([self._runner])
            self._runner = None
        self._group = None


def _label(text: str, limit: int = 63) -> str:
    """A DNS-SD instance label: no control characters, no dots, at most ``limit`` bytes."""
    return cut_utf8(printable(text).replace(".", "-").strip(), limit) or "port"


def _host_label(text: str) -> str:
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in text.lower())
    return cleaned.strip("-")[:63] or "meshserial"


# -------------------------------------------------------------------------------------- advertise


class _Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = _Unset.UNSET


@dataclass(slots=True)
class _Link:
    iface: Interface
    zc: AsyncZeroconf


@dataclass(slots=True)
class _Slot:
    """One service on one link: what we want published versus what is."""

    desired: ServiceAd | None
    info: AsyncServiceInfo | None = None
    published: tuple[int, dict[str, str]] | None = None
    dirty: bool = True
    busy: bool = False


class Advertiser:
    """Publishes :class:`ServiceAd`\\ s on the given interfaces, one AsyncZeroconf per interface.

    ``add``/``update``/``remove`` return at once: mDNS probing takes ~1.6 s per name, so the work runs
    in tasks this object owns (and cancels in :meth:`aclose`). Rapid updates to one port coalesce.
    ``host_label`` must be unique per node (``"ms-" + id[3:15]``): mDNS does not probe host names.
    """

    def __init__(
        self, *, interfaces: list[Interface], host_label: str, tcp_port: int, host: str | None = None
    ) -> None:
        if not interfaces:
            raise UsageError("no interface to advertise on")
        self._interfaces = list(interfaces)
        self._server = f"{_host_label(host_label)}.local."
        self._host = host or socket.gethostname()
        self._tcp_port = tcp_port
        self._ads: dict[str, ServiceAd] = {}
        self._links: list[_Link] = []
        self._slots: dict[tuple[int, str], _Slot] = {}
        self._tasks = _Tasks("mDNS advertiser")
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False

    @property
    def interfaces(self) -> list[Interface]:
        """The interfaces actually in use (after start)."""
        return [link.iface for link in self._links]

    async def start(self) -> None:
        """Open the per-interface responders; raises NetworkError if none could be opened."""
        for iface in self._interfaces:
            aiozc = open_zeroconf(iface)
            if aiozc is not None:
                self._links.append(_Link(iface, aiozc))
        if not self._links:
            names = ", ".join(i.name for i in self._interfaces)
            raise NetworkError(f"mDNS could not start on any interface ({names})")
        await self._tasks.start()
        self._started = True
        for name in self._ads:
            self._kick(name)

    async def add(self, ad: ServiceAd) -> None:
        """Start advertising ``ad``; UsageError if a port of that name is already advertised."""
        if ad.name in self._ads:
            raise UsageError(f"port {ad.name!r} is already advertised")
        self._ads[ad.name] = replace(ad, device=dict(ad.device))
        self._kick(ad.name)

    async def update(
        self,
        name: str,
        *,
        state: str | None = None,
        holder: str | _Unset | None = UNSET,
        rights: str | None = None,
        device: dict[str, str] | None = None,
    ) -> None:
        """Change fields of an advertised port; only the TXT record is re-announced."""
        ad = self._ads.get(name)
        if ad is None:
            raise UsageError(f"port {name!r} is not advertised")
        if state is not None:
            ad.state = state
        if not isinstance(holder, _Unset):
            ad.holder = holder
        if rights is not None:
            ad.rights = rights
        if device is not None:
            ad.device = dict(device)
        self._kick(name)

    async def remove(self, name: str) -> None:
        """Stop advertising ``name`` (goodbye packets are sent); unknown names are ignored."""
        if self._ads.pop(name, None) is not None:
            self._kick(name)

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every pending registration/update/removal is on the wire; False on timeout."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that arrives as
        # the awaited event is set, and the caller (shutting down) would carry on as if not cancelled.
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def published_name(self, name: str) -> list[str]:
        """The DNS-SD instance names ``name`` got on each link (mDNS may have renamed it)."""
        return [
            slot.info.name
            for (_, port), slot in self._slots.items()
            if port == name and slot.info is not None and slot.published is not None
        ]

    async def aclose(self) -> None:
        """Cancel pending work, send goodbyes for everything published, close the responders."""
        self._started = False
        await self._tasks.aclose()
        links, self._links = self._links, []
        # AsyncZeroconf.async_close() unregisters every service still registered (goodbyes, TTL 0,
        # three times) and waits for those sends before closing the sockets.
        await asyncio.gather(*(link.zc.async_close() for link in links))
        self._slots.clear()
        self._idle.set()

    async def __aenter__(self) -> Advertiser:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _instance(self, name: str) -> str:
        # The host label makes instance names unique per node by construction: mDNS probing only
        # catches collisions between nodes that do not start at the same moment.
        suffix = f" @ {self._server.removesuffix('.local.')}"
        return _label(name, 63 - len(suffix.encode())) + suffix

    def _kick(self, name: str) -> None:
        if not self._started:
            return
        ad = self._ads.get(name)
        for index in range(len(self._links)):
            slot = self._slots.get((index, name))
            if slot is None:
                if ad is None:
                    continue
                slot = self._slots[(index, name)] = _Slot(desired=None)
            slot.desired = ad
            slot.dirty = True
            if not slot.busy:
                slot.busy = True
                self._idle.clear()
                self._tasks.spawn(self._sync(index, name, slot), f"publishing {name!r}")

    async def _sync(self, index: int, name: str, slot: _Slot) -> None:
        link = self._links[index]
        try:
            while slot.dirty:
                slot.dirty = False
                await self._sync_once(link, slot)
        finally:
            slot.busy = False
            if slot.desired is None and slot.info is None and self._slots.get((index, name)) is slot:
                del self._slots[(index, name)]
            if not any(s.busy for s in self._slots.values()):
                self._idle.set()

    async def _sync_once(self, link: _Link, slot: _Slot) -> None:
        ad = slot.desired
        if ad is None:
            if slot.info is not None:
                info, slot.info, slot.published = slot.info, None, None
                await (await link.zc.async_unregister_service(info))
            return
        wanted = (ad.port or self._tcp_port, build_txt(ad, host=self._host))
        if slot.info is not None and wanted == slot.published:
            return
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            slot.info.name if slot.info is not None else f"{self._instance(ad.name)}.{SERVICE_TYPE}",
            port=wanted[0],
            properties=dict(wanted[1]),
            server=self._server,
            parsed_addresses=list(link.iface.ipv4),
            other_ttl=_OTHER_TTL,
        )
        try:
            if slot.info is None:
                slot.info = info
                await (await link.zc.async_register_service(info, allow_name_change=True))
                log.debug("advertised %s on %s", info.name, link.iface.name)
            else:
                slot.info = info
                refresh_queued_answers(link.zc.zeroconf, info)
                await (await link.zc.async_update_service(info))
        except BadTypeInNameException as exc:
            slot.info = None
            log.warning("cannot advertise port %r: %s", ad.name, exc)
            return
        slot.published = wanted


# ----------------------------------------------------------------------------------------- browse


@dataclass(frozen=True, slots=True)
class BrowseEvent:
    """A change seen by a :class:`Browser`: ``added``, ``updated`` or ``removed``."""

    change: Literal["added", "updated", "removed"]
    entry: Discovered


_Sighting = tuple[int, str, str]  # (link index, service type, service name)


class Browser:
    """Live view of meshserial (and ser2net) ports on the given interfaces.

    ``async with Browser(interfaces=…) as b:`` then either :meth:`snapshot` (after :meth:`settle`) or
    ``async for event in b`` for added/updated/removed events (``list --watch``). Events coalesce: a
    slow consumer sees the latest state of each port, never a backlog.
    """

    def __init__(self, *, interfaces: list[Interface], include_ser2net: bool = True) -> None:
        if not interfaces:
            raise UsageError("no interface to browse on")
        self._interfaces = list(interfaces)
        self._types = [SERVICE_TYPE, SER2NET_TYPE] if include_ser2net else [SERVICE_TYPE]
        self._links: list[_Link] = []
        self._browsers: list[AsyncServiceBrowser] = []
        self._tasks = _Tasks("mDNS browser")
        self._seen: dict[_Sighting, Discovered] = {}
        self._resolving: dict[_Sighting, bool] = {}  # value: re-resolve when done
        self._merged: dict[tuple[str, str, str], Discovered] = {}
        self._reported: dict[tuple[str, str, str], Discovered] = {}
        self._dirty: dict[tuple[str, str, str], None] = {}
        self._changed = asyncio.Event()
        self._activity = asyncio.Event()
        self._log_once = LogOnce(
            log, capacity=1024, level=logging.INFO, message="ignoring mDNS advert from %s: %s"
        )
        self._closed = False
        self._first_window = (
            _FIRST_ANSWER_WINDOW_LOOPBACK if any(i.is_loopback for i in interfaces) else _FIRST_ANSWER_WINDOW
        )
        self._started_at = 0.0
        self._last_activity = 0.0

    async def start(self) -> None:
        """Open one browser per interface; raises NetworkError if none could be opened."""
        loop = asyncio.get_running_loop()
        for iface in self._interfaces:
            aiozc = open_zeroconf(iface)
            if aiozc is not None:
                self._links.append(_Link(iface, aiozc))
        if not self._links:
            names = ", ".join(i.name for i in self._interfaces)
            raise NetworkError(f"mDNS could not start on any interface ({names})")
        await self._tasks.start()
        await asyncio.gather(*(link.zc.zeroconf.async_wait_for_start(timeout=2.0) for link in self._links))
        self._started_at = self._last_activity = loop.time()
        for index, link in enumerate(self._links):
            handler = self._make_handler(index)
            self._browsers.append(
                AsyncServiceBrowser(link.zc.zeroconf, list(self._types), handlers=[handler])
            )
            send_qm_query(link.zc.zeroconf, self._types)

    async def aclose(self) -> None:
        """Stop browsing and close every zeroconf instance; iteration ends."""
        self._closed = True
        self._changed.set()
        browsers, self._browsers = self._browsers, []
        await asyncio.gather(*(b.async_cancel() for b in browsers))
        await self._tasks.aclose()
        links, self._links = self._links, []
        await asyncio.gather(*(link.zc.async_close() for link in links))

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def snapshot(self) -> list[Discovered]:
        """Everything currently known, merged, sorted by host then name."""
        return sorted(self._merged.values(), key=lambda d: (d.kind, d.host, d.name))

    async def settle(self, *, timeout: float, quiet: float = 0.3) -> None:
        """Return once answers have stopped coming: no resolve pending and nothing new for ``quiet``
        seconds (and at least the first-answer window has passed), or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (now := loop.time()) < deadline:
            if self._resolving:
                wait = deadline - now
            else:
                until = max(self._last_activity + quiet, self._started_at + self._first_window)
                if now >= until:
                    return
                wait = min(until, deadline) - now
            self._activity.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: see wait_settled()
                    await self._activity.wait()

    def __aiter__(self) -> Browser:
        return self

    async def __anext__(self) -> BrowseEvent:
        while True:
            while self._dirty:
                key = next(iter(self._dirty))
                del self._dirty[key]
                current, previous = self._merged.get(key), self._reported.get(key)
                if current is None and previous is not None:
                    del self._reported[key]
                    return BrowseEvent("removed", previous)
                if current is not None and current != previous:
                    self._reported[key] = current
                    return BrowseEvent("added" if previous is None else "updated", current)
            if self._closed:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()

    def _bad(self, peer: str, reason: str) -> None:
        # Service and host names are the sender's choice: escaped here as well as by the CLI's log
        # formatter, since a program using meshserial as a library configures its own logging.
        # Reasons are ours; any advert value they quote is quoted with repr().
        self._log_once.warning(escape(peer, 100), reason)

    def _touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        self._activity.set()

    def _make_handler(self, index: int) -> Any:
        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            del zeroconf
            sighting = (index, service_type, name)
            self._touch()
            if state_change is ServiceStateChange.Removed:
                self._forget(sighting)
            elif sighting in self._resolving:
                self._resolving[sighting] = True
            elif len(self._seen) < _MAX_ENTRIES or sighting in self._seen:
                self._resolving[sighting] = False
                self._tasks.spawn(self._resolve(sighting), f"resolving {name!r}")
            else:
                self._bad(name, "too many services on the network")

        return on_change

    async def _resolve(self, sighting: _Sighting) -> None:
        link = self._links[sighting[0]]
        try:
            while True:
                self._resolving[sighting] = False
                await self._resolve_once(link, sighting)
                if not self._resolving.get(sighting):
                    break
        finally:
            self._resolving.pop(sighting, None)
            self._touch()

    async def _resolve_once(self, link: _Link, sighting: _Sighting) -> None:
        _, service_type, name = sighting
        try:
            info = AsyncServiceInfo(service_type, name)
        except BadTypeInNameException:
            self._bad(name, "bad service name")
            return
        if not await info.async_request(link.zc.zeroconf, int(_RESOLVE_TIMEOUT * 1000)):
            log.debug("could not resolve %s on %s", escape(name, 100), link.iface.name)
            return
        server = info.server or name
        if info.text is not None and len(info.text) > MAX_INCOMING_TXT:
            self._bad(server, "oversized TXT record")
            return
        txt = {k: v or "" for k, v in info.decoded_properties.items()}
        instance = name.removesuffix("." + service_type)
        try:
            seen = parse_service(service_type, instance, server, txt)
        except MalformedAdvert as exc:
            if service_type == SERVICE_TYPE or str(exc) != "not a ser2net advert":
                self._bad(server, str(exc))
            return
        if info.port is None:
            self._bad(server, "no SRV port")
            return
        seen.addresses = [
            f"[{a}]:{info.port}" if ":" in a else f"{a}:{info.port}" for a in info.parsed_scoped_addresses()
        ]
        seen.via = [link.iface.label]
        if self._closed:
            return
        old = self._seen.get(sighting)
        self._seen[sighting] = seen
        self._remerge([seen.key] if old is None or old.key == seen.key else [old.key, seen.key])

    def _forget(self, sighting: _Sighting) -> None:
        old = self._seen.pop(sighting, None)
        if old is not None:
            self._remerge([old.key])

    def _remerge(self, keys: list[tuple[str, str, str]]) -> None:
        for key in keys:
            parts = [d for s, d in sorted(self._seen.items()) if d.key == key]
            if parts:
                self._merged[key] = merge(parts)[0]
            else:
                self._merged.pop(key, None)
            self._dirty[key] = None
        self._changed.set()


async def browse(
    *,
    interfaces: list[Interface],
    timeout: float,
    include_ser2net: bool = True,
    quiet: float = 0.3,
) -> list[Discovered]:
    """Ports visible on ``interfaces`` right now, merged across links.

    Returns when answers have settled (nothing new for ``quiet`` s, see :meth:`Browser.settle`),
    at the latest after ``timeout`` s. Typically ~0.6 s. One known gap: a server on the *same host*
    that registered less than a second ago may answer only after ~1 s, too late for a LAN browse
    (loopback browses wait long enough); a :class:`Browser` (``list --watch``) still sees it.
    """
    async with Browser(interfaces=interfaces, include_ser2net=include_ser2net) as browser:
        await browser.settle(timeout=timeout, quiet=quiet)
        return browser.snapshot()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def probe(addresses: Iterable[str], timeout: float) -> bool:
    """True if a TCP connection to any of ``addresses`` (``ip:port``) succeeds within ``timeout``."""

    async def attempt(address: str) -> bool:
        try:
            host, port = _split_address(address)
            _, writer = await asyncio.open_connection(host, port)
        except (OSError, ValueError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    pending = {asyncio.ensure_future(attempt(a)) for a in addresses}
    if not pending:
        return False
    try:
        async with asyncio.timeout(timeout):
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(task.result() for task in done):
                    return True
    except TimeoutError:
        pass
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
    return False
