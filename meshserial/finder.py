"""Find shared ports: mDNS on the chosen links and a rendezvous service, merged, probed and judged.

This backs ``meshserial list`` and the resolution of ``use NAME``:

1. **Gather**, concurrently: an mDNS browse on the chosen interfaces (``_meshserial._tcp`` and ser2net's
   ``_iostream._tcp``) and, when a rendezvous URL is given, its records (every signature verified by
   :func:`~meshserial.discovery.rendezvous.fetch_records`). A source that fails is a warning.
2. **Merge** sightings of one port (same server identity and port name): addresses and ``via`` are
   unioned; mDNS fields (fresher) win over the record's.
3. **Order** each entry's addresses for connecting: local LAN subnets first, then overlay (ZeroTier)
   subnets, then everything else.
4. **Probe** every distinct address with a short TCP connect. A server that vanished without a goodbye
   (killed, unplugged) stays in mDNS caches and in the rendezvous until its record expires; the probe
   is what tells such leftovers apart (state ``unreachable``).
5. **Judge trust** against ``known_servers``. The labels a discovered server is checked against are its
   advertised host name (``HOST``, plus ``:PORT`` when the port is not 7217: the label ``use
   NAME@HOST`` uses when HOST is typed the same way) and each of its addresses in the same form
   (``198.18.1.1``, ``198.18.1.1:7300``), as ``use NAME@ADDRESS`` would have pinned it. Any of these
   labels pinned to *another* key → ``KEY CHANGED``; the key pinned under one of them, or under any
   other name (``meshserial trust ID --name N``) → ``pinned``; otherwise ``new``.

Everything found here is a hint. ``use`` still proves the server's identity with the handshake against
the pin (and requires the identity that discovery announced).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from meshserial.addresses import DEFAULT_PORT, format_hostport
from meshserial.discovery import mdns
from meshserial.discovery.mdns import Discovered
from meshserial.discovery.overlay import Interface, address_rank, list_interfaces, select_interfaces
from meshserial.errors import ConnectError, MeshserialError, ServerKeyChanged, UsageError
from meshserial.keys import format_id, parse_id
from meshserial.logonce import LogOnce
from meshserial.proto.text import escape, valid_port_name
from meshserial.trust import KnownServers

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 3.0
PROBE_TIMEOUT = 1.0
RENDEZVOUS_VIA = "rendezvous"
MAX_PROBES = 512
_BAD_LABEL_CHARS = re.compile(r"[\s\x00-\x1f\x7f\"'#=\\]+")
_bad_record_port = LogOnce(log, capacity=1024, level=logging.INFO, message="rendezvous record of %s: %s")


@dataclass(frozen=True, slots=True, kw_only=True)
class FindOptions:
    """Where to look (``list``, ``use NAME``)."""

    interfaces: tuple[str, ...] = ()  # names or globs; empty: the default choice
    mdns: bool = True
    rendezvous: str | None = None
    rendezvous_token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    probe_timeout: float = PROBE_TIMEOUT
    include_ser2net: bool = True


@dataclass(slots=True, kw_only=True)
class Found:
    """One port as ``list`` shows it."""

    entry: Discovered
    trust: str  # pinned | new | KEY CHANGED | bad id | none (ser2net)
    label: str  # the known_servers name the server is checked (and pinned) under

    @property
    def state(self) -> str:
        return "unreachable" if self.entry.reachable is False else self.entry.state

    @property
    def target(self) -> str:
        """What to give ``use`` to reach exactly this port."""
        entry = self.entry
        if not entry.addresses:
            return ""
        host, port = split_address(entry.addresses[0])
        if entry.kind == "ser2net":
            return f"rfc2217://{format_hostport(host, port)}"
        return f"{entry.name}@{server_label(host, port)}"

    def to_json(self) -> dict[str, Any]:
        entry = self.entry
        return {
            "name": entry.name,
            "host": entry.host,
            "id": entry.server_id,
            "addresses": list(entry.addresses),
            "via": list(entry.via),
            "device": dict(entry.device),
            "state": self.state,
            "trust": self.trust,
            "kind": entry.kind,
            "holder": entry.holder,
            "rights": entry.rights,
            "reachable": entry.reachable,
            "label": self.label,
            "target": self.target,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved:
    """A port name resolved to one server."""

    name: str
    server_id: bytes
    host: str
    label: str
    addresses: tuple[tuple[str, int], ...]  # in the order to try


def server_label(host: str, port: int) -> str:
    """The name a server is pinned under in ``known_servers`` (like SSH: the host, plus a port if
    it is not the default one)."""
    return host if port == DEFAULT_PORT else format_hostport(host, port)


def split_address(address: str) -> tuple[str, int]:
    """``ip:port`` / ``[v6]:port`` → ``(ip, port)``."""
    host, _, port = address.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _clean_label(text: str) -> str:
    # The host name is the server's choice and a label ends up in known_servers and in prompts: what
    # escape() would escape (C1 controls, bidirectional overrides…) goes, like whitespace and quotes.
    safe = "".join(c if escape(c) == c else "-" for c in text)
    return _BAD_LABEL_CHARS.sub("-", safe).strip("-")[:200]


# ------------------------------------------------------------------------------------------ gather


def record_entries(record: Any) -> list[Discovered]:
    """The ports of a verified rendezvous :class:`~meshserial.proto.records.Record`, one entry each.

    A port whose name is not usable (:func:`~meshserial.proto.text.valid_port_name`) is left out, as
    an mDNS advert of it would be: nothing could connect to it by that name.
    """
    server_id = format_id(record.server_id)
    entries: list[Discovered] = []
    for port in record.ports:
        if not valid_port_name(port.name):
            _bad_record_port.warning(server_id, f"ignoring port with unusable name {port.name[:32]!r}")
            continue
        entries.append(
            Discovered(
                kind="meshserial",
                name=port.name,
                host="",
                server_id=server_id,
                addresses=list(record.addresses),
                via=[RENDEZVOUS_VIA],
                device={"desc": port.device} if port.device else {},
                state=port.state.value,
                rights="",
                holder=None,
                txt={},
            )
        )
    return entries


def merge_sources(*sources: list[Discovered]) -> list[Discovered]:
    """Merge entries from several sources by :attr:`Discovered.key`; earlier sources supply the fields."""
    merged: dict[tuple[str, str, str], Discovered] = {}
    for source in sources:
        for seen in source:
            have = merged.get(seen.key)
            if have is None:
                merged[seen.key] = replace(seen, addresses=list(seen.addresses), via=list(seen.via))
                continue
            have.addresses.extend(a for a in seen.addresses if a not in have.addresses)
            have.via.extend(v for v in seen.via if v not in have.via)
            if not have.host:
                have.host = seen.host
    return list(merged.values())


async def browse_interfaces(options: FindOptions) -> list[Interface]:
    """The interfaces to browse on (UsageError for a pattern that matches nothing); [] with a warning
    when there is none."""
    patterns = list(options.interfaces) or None
    interfaces = await asyncio.to_thread(select_interfaces, patterns)
    if not interfaces:
        log.warning("no network interface to look on with mDNS (see 'meshserial doctor')")
    return interfaces


async def _browse(options: FindOptions) -> list[Discovered]:
    interfaces = await browse_interfaces(options)
    if not interfaces:
        return []
    try:
        return await mdns.browse(
            interfaces=interfaces, timeout=options.timeout, include_ser2net=options.include_ser2net
        )
    except MeshserialError as exc:
        log.warning("mDNS: %s", exc)
        return []


async def fetch(options: FindOptions, name: str | None = None) -> list[Discovered]:
    """The rendezvous' verified records as entries; [] with a warning when it cannot be asked."""
    assert options.rendezvous is not None
    from meshserial.discovery.rendezvous import fetch_records  # noqa: PLC0415 - aiohttp only when used

    try:
        found = await fetch_records(
            options.rendezvous, name=name, timeout=max(options.timeout, 1.0), token=options.rendezvous_token
        )
    except UsageError:
        raise
    except MeshserialError as exc:
        log.warning("%s", escape(str(exc)))  # may quote what the service or its HTTP stack said
        return []
    return [entry for record in found for entry in record_entries(record)]


async def gather(options: FindOptions, *, name: str | None = None) -> list[Discovered]:
    """Every port mDNS and the rendezvous know of right now, merged (not probed, not judged)."""
    async with asyncio.TaskGroup() as tasks:
        browsing = tasks.create_task(_browse(options)) if options.mdns else None
        fetching = tasks.create_task(fetch(options, name)) if options.rendezvous else None
    return merge_sources(
        browsing.result() if browsing is not None else [],
        fetching.result() if fetching is not None else [],
    )


# ---------------------------------------------------------------------------------- order, probe


def order_addresses(entries: list[Discovered], interfaces: list[Interface]) -> None:
    """Sort each entry's addresses: LAN, then overlay, then others (stable otherwise)."""
    for entry in entries:
        entry.addresses.sort(key=lambda a: address_rank(a, interfaces))


async def probe_all(entries: list[Discovered], timeout: float) -> None:
    """Set ``reachable`` on every entry: can a TCP connection to one of its addresses be opened?"""
    distinct = list(dict.fromkeys(a for e in entries for a in e.addresses))[:MAX_PROBES]
    async with asyncio.TaskGroup() as tasks:
        probes = {a: tasks.create_task(mdns.probe([a], timeout)) for a in distinct}
    alive = {a for a, task in probes.items() if task.result()}
    for entry in entries:
        entry.reachable = any(a in alive for a in entry.addresses)


# ------------------------------------------------------------------------------------------ trust


def judge(entry: Discovered, known: KnownServers) -> Found:
    """Compare ``entry``'s identity with the pins (see the module docstring)."""
    if entry.kind != "meshserial":
        return Found(entry=entry, trust="none", label="")  # ser2net: no identity, no authentication
    try:
        server_id = parse_id(entry.server_id)
    except UsageError:
        return Found(entry=entry, trust="bad id", label="")
    labels: list[str] = []
    port = split_address(entry.addresses[0])[1] if entry.addresses else DEFAULT_PORT
    if entry.host and (host := _clean_label(entry.host)):
        labels.append(server_label(host, port))
    for address in entry.addresses:
        labels.append(server_label(*split_address(address)))
    labels = list(dict.fromkeys(labels))
    pinned: str | None = None
    for label in labels:
        try:
            if known.check(label, server_id) == "pinned" and pinned is None:
                pinned = label
        except ServerKeyChanged:
            return Found(entry=entry, trust="KEY CHANGED", label=label)
    if pinned is None and (names := known.names_for(server_id)):
        pinned = names[0]
    if not entry.host:
        # A rendezvous record names no host: show the name it is pinned under, else its address.
        shown = pinned or (labels[0] if labels else "")
        entry.host = split_address(shown)[0] if re.search(r":\d+$", shown) else shown
    if pinned is not None:
        return Found(entry=entry, trust="pinned", label=pinned)
    return Found(entry=entry, trust="new", label=labels[0] if labels else "")


# ------------------------------------------------------------------------------------------- find


async def find(options: FindOptions, *, name: str | None = None, probe: bool = True) -> list[Found]:
    """What ``list`` shows: gathered, ordered, probed and judged; sorted by name, then host."""
    entries = await gather(options, name=name)
    if name is not None:
        entries = [e for e in entries if e.name == name]
    return await assess(entries, options, probe=probe)


async def assess(entries: list[Discovered], options: FindOptions, *, probe: bool = True) -> list[Found]:
    """Order, probe and judge gathered entries (``list --watch`` calls this on every change)."""
    if entries:
        interfaces = await asyncio.to_thread(list_interfaces, zerotier=False)
        order_addresses(entries, interfaces)
        if probe:
            await probe_all(entries, options.probe_timeout)
    known = await asyncio.to_thread(lambda: KnownServers().load())
    found = [judge(e, known) for e in entries]
    found.sort(key=lambda f: (f.entry.name, f.entry.host, f.entry.kind, f.entry.server_id))
    return found


def _candidate(found: Found) -> str:
    """One server in an error message; the host and id are what the server advertised."""
    where = found.target or found.entry.name
    host = f"host {found.entry.host}, " if found.entry.host else ""
    return escape(f"{where} ({host}{found.entry.server_id[:16]}…)")


async def resolve(name: str, options: FindOptions, *, server_id: bytes | None = None) -> Resolved:
    """The one server sharing a port called ``name`` (restricted to ``server_id`` when given).

    Raises ConnectError when nothing answers to that name, UsageError when several servers do.
    """
    found = await find(options, name=name)
    matches = [f for f in found if f.entry.kind == "meshserial" and f.trust != "bad id"]
    if server_id is not None:
        wanted = format_id(server_id)
        matches = [f for f in matches if f.entry.server_id == wanted]
    if not matches:
        places = [*(["mDNS"] if options.mdns else []), *([options.rendezvous] if options.rendezvous else [])]
        raise ConnectError(
            f"no port named {name!r} found (looked with {' and '.join(places) or 'nothing'}); "
            "check 'meshserial list', or give NAME@HOST[:PORT]"
        )
    live = [f for f in matches if f.entry.reachable is not False]
    if not live:
        raise ConnectError(
            f"{name!r} was found ({', '.join(_candidate(f) for f in matches)}) but does not answer"
        )
    if len({f.entry.server_id for f in live}) > 1:
        raise UsageError(
            f"several servers share a port named {name!r}: {'; '.join(_candidate(f) for f in live)}. "
            "Pick one with NAME@HOST[:PORT]"
        )
    chosen = live[0]
    return Resolved(
        name=name,
        server_id=parse_id(chosen.entry.server_id),
        host=chosen.entry.host,
        label=chosen.label,
        addresses=tuple(split_address(a) for a in chosen.entry.addresses),
    )
