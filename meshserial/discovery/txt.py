"""The ``_meshserial._tcp`` TXT record, and what a browser makes of adverts (meshserial and ser2net).

Pure data: no sockets, no zeroconf. :mod:`meshserial.discovery.mdns` re-exports everything here.

TXT schema (``v=1``), keys at most 9 characters as RFC 6763 section 6.4 asks:

==========  =========================================================================
``v``       protocol version, ``1``
``port``    port name; the instance name is ``<port> @ <host label>``, renamed by mDNS on collision
``id``      server identity string (``ms1…``); a hint, never a proof
``host``    the server's host name, for humans
``state``   ``free`` | ``in-use`` | ``offline``
``rights``  what a client may expect, e.g. ``rw``, ``ro``, ``auth``
``holder``  short label of the current holder, only while ``in-use`` (optional)
``vid`` ``pid`` ``serial`` ``mfr`` ``product`` ``desc``
            device description, each optional
==========  =========================================================================

Each ``key=value`` string is cut to 255 bytes (section 6.1) and the whole record is kept at or below
1300 bytes (section 6.2) by dropping device keys, ``desc`` first. Building a TXT never fails.

ser2net (``_iostream._tcp``, ``provider=ser2net``) adverts are mapped onto the same
:class:`Discovered` shape; its sysfs keys (``idVendor`` …) become our device keys.

Text goes two ways here. What *we* advertise is cleaned with :func:`printable` (a control character
becomes a space: other browsers, avahi-browse for one, print TXT values raw). What we *receive* is kept
as it came, since it is data (``--json`` shows it exactly); whoever shows it to a human escapes it with
:func:`meshserial.proto.text.escape`. The one field checked on arrival is ``port``: an advert whose port
name is not usable (:func:`~meshserial.proto.text.valid_port_name`) is malformed, as nothing could
connect to it by that name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from meshserial.proto.text import escape, valid_port_name

SERVICE_TYPE = "_meshserial._tcp.local."
SER2NET_TYPE = "_iostream._tcp.local."
TXT_VERSION = "1"
STATES = ("free", "in-use", "offline")
DEVICE_KEYS = ("vid", "pid", "serial", "mfr", "product", "desc")
_DROP_ORDER = ("desc", "product", "mfr", "serial", "pid", "vid")

MAX_TXT_STRING = 255
MAX_TXT_TOTAL = 1300
MAX_INCOMING_TXT = 2048  # more than a conforming sender ever needs; larger records are ignored
_MAX_RIGHTS = 32
_MAX_HOLDER = 64


# --------------------------------------------------------------------------------------------- TXT


def cut_utf8(text: str, limit: int) -> str:
    """``text`` shortened to at most ``limit`` UTF-8 bytes, never splitting a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def printable(text: str) -> str:
    """``text`` with every character :func:`~meshserial.proto.text.escape` would escape replaced by a
    space: for values we send, where a plain space reads better than an escape sequence."""
    # One definition of "unsafe" for both directions: a character is unsafe when escape() changes it.
    if escape(text) == text:
        return text
    return "".join(c if escape(c) == c else " " for c in text)


def txt_size(txt: dict[str, str]) -> int:
    """Wire size of a TXT record: one length byte plus ``key=value`` per string."""
    return sum(1 + len(k.encode()) + 1 + len(v.encode()) for k, v in txt.items())


@dataclass(slots=True, kw_only=True)
class ServiceAd:
    """One port to advertise. ``port`` is the TCP port; 0 means the Advertiser's ``tcp_port``."""

    name: str
    port: int
    server_id: str
    state: str
    rights: str
    device: dict[str, str] = field(default_factory=dict)
    holder: str | None = None


def build_txt(ad: ServiceAd, *, host: str) -> dict[str, str]:
    """The TXT properties for ``ad``, trimmed to the limits in the module docstring."""
    txt: dict[str, str] = {
        "v": TXT_VERSION,
        "port": ad.name,
        "id": ad.server_id,
        "host": host,
        "state": ad.state,
        "rights": cut_utf8(ad.rights, _MAX_RIGHTS),
    }
    if ad.holder:
        txt["holder"] = cut_utf8(printable(ad.holder), _MAX_HOLDER)
    for key in DEVICE_KEYS:
        value = ad.device.get(key)
        if value:
            txt[key] = printable(value)
    for key, value in txt.items():
        txt[key] = cut_utf8(value, MAX_TXT_STRING - len(key.encode()) - 1)
    for key in (*_DROP_ORDER, "holder", "host"):
        if txt_size(txt) <= MAX_TXT_TOTAL:
            break
        txt.pop(key, None)
    return txt


def device_summary(device: dict[str, str]) -> str:
    """One line for humans: ``FTDI FT232R USB UART 0403:6001`` (``""`` when nothing is known).

    The values are used as they are: escape the result to show a peer's description, clean it with
    :func:`printable` to send our own.
    """
    parts: list[str] = []
    name = device.get("product") or device.get("desc") or ""
    mfr = device.get("mfr", "")
    if mfr and not name.lower().startswith(mfr.lower()):
        parts.append(mfr)
    if name:
        parts.append(name)
    if device.get("vid") and device.get("pid"):
        parts.append(f"{device['vid']}:{device['pid']}")
    if device.get("serial"):
        parts.append(f"#{device['serial']}")
    return " ".join(parts)


class MalformedAdvert(Exception):
    """Internal: a TXT record from the network that we will not use (the message is the reason)."""


def _ser2net_device(txt: dict[str, str]) -> dict[str, str]:
    names = {"idVendor": "vid", "idProduct": "pid", "serial": "serial", "manufacturer": "mfr"}
    names |= {"product": "product", "interface": "desc"}
    return {ours: txt[theirs] for theirs, ours in names.items() if txt.get(theirs)}


# ------------------------------------------------------------------------------------- discovered


Kind = Literal["meshserial", "ser2net"]


@dataclass(slots=True, kw_only=True)
class Discovered:
    """A port seen on the network, merged over every link it was seen on.

    ``addresses`` are ``ip:port`` (``[v6]:port`` for IPv6); ``via`` names the links, with the ZeroTier
    network name when known (``zt3a1(My Net)``). For ser2net entries ``server_id`` is empty, ``state``
    is ``unknown`` and ``txt`` keeps ser2net's own keys (``gensiostack`` tells telnet/RFC 2217 from raw).
    ``reachable`` is None until a caller has :func:`probe`\\ d the entry.
    """

    kind: Kind
    name: str
    host: str
    server_id: str
    addresses: list[str]
    via: list[str]
    device: dict[str, str]
    state: str
    rights: str
    holder: str | None
    txt: dict[str, str]
    reachable: bool | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two sightings the same port."""
        if self.kind == "meshserial":
            return (self.kind, self.server_id, self.name)
        return (self.kind, self.host, self.name)


def parse_service(service_type: str, instance: str, server: str, txt: dict[str, str]) -> Discovered:
    """A :class:`Discovered` (one link, no addresses yet) from a resolved service.

    Raises :class:`MalformedAdvert` for records that are not ours to use.
    """
    if txt_size(txt) > MAX_INCOMING_TXT:
        raise MalformedAdvert("oversized TXT record")
    host = server.removesuffix(".").removesuffix(".local")
    if service_type == SER2NET_TYPE:
        if txt.get("provider") != "ser2net":
            raise MalformedAdvert("not a ser2net advert")
        return Discovered(
            kind="ser2net", name=instance, host=host, server_id="", addresses=[], via=[],
            device=_ser2net_device(txt), state="unknown", rights="", holder=None, txt=txt,
        )  # fmt: skip
    if txt.get("v") != TXT_VERSION:
        raise MalformedAdvert(f"unsupported TXT version {txt.get('v', '(none)')[:8]!r}")
    name, server_id = txt.get("port", ""), txt.get("id", "")
    if not name or not server_id:
        raise MalformedAdvert("TXT without port or id")
    if not valid_port_name(name):
        raise MalformedAdvert(f"unusable port name {name[:32]!r}")
    state = txt.get("state", "")
    if state not in STATES:
        raise MalformedAdvert(f"unknown state {state[:16]!r}")
    return Discovered(
        kind="meshserial", name=name, host=txt.get("host") or host, server_id=server_id, addresses=[],
        via=[], device={k: txt[k] for k in DEVICE_KEYS if txt.get(k)}, state=state,
        rights=txt.get("rights", ""), holder=txt.get("holder") or None, txt=txt,
    )  # fmt: skip


def merge(sightings: Iterable[Discovered]) -> list[Discovered]:
    """Merge sightings of the same port (same :attr:`Discovered.key`): addresses and via unioned.

    The first sighting of a key supplies the other fields. Order is preserved.
    """
    merged: dict[tuple[str, str, str], Discovered] = {}
    for seen in sightings:
        have = merged.get(seen.key)
        if have is None:
            merged[seen.key] = replace(seen, addresses=list(seen.addresses), via=list(seen.via))
            continue
        have.addresses.extend(a for a in seen.addresses if a not in have.addresses)
        have.via.extend(v for v in seen.via if v not in have.via)
    return list(merged.values())
