"""python-zeroconf plumbing for :mod:`meshserial.discovery.mdns`: one responder per interface.

Opening an instance bound to one interface (and only that interface's traffic), checking that mDNS
works there, sending an extra multicast query, and refreshing answers zeroconf has already queued.
Some of this reaches into zeroconf internals that are stable but not public; each use says why.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys

from zeroconf import IPVersion, NotRunningException, Zeroconf
from zeroconf._dns import DNSQuestion  # not re-exported for type checkers; stable since 0.3x
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshserial.discovery.overlay import Interface

log = logging.getLogger(__name__)

_IP_MULTICAST_ALL = 49  # <linux/in.h>; not exported by the socket module
# How a browser asks (RFC 6762 section 5.4). python-zeroconf's browser opens with a QU question: the
# answer comes at once, by unicast when the record was multicast recently. But when several processes on
# one host share an address (share + list, or tests on 127.0.0.1) the kernel hands that unicast answer to
# any one of their SO_REUSEPORT sockets, so the asker may not get it. A QM question is answered by
# multicast, which every socket gets, but a responder holds back records it multicast within the last
# second (section 14), e.g. just after registering. The Browser sends one QM query of its own next to the
# library's QU one: the answer is fast unless both effects hit the same record.
_DNS_FLAGS_QUERY = 0x0000
_DNS_TYPE_PTR = 12
_DNS_TYPE_TXT = 16
_DNS_CLASS_IN = 1


def open_zeroconf(iface: Interface) -> AsyncZeroconf | None:
    """One AsyncZeroconf bound to ``iface``'s IPv4 addresses, or None (logged) when that fails."""
    if not iface.ipv4:
        log.warning("interface %s has no IPv4 address; mDNS skips it", iface.name)
        return None
    try:
        aiozc = AsyncZeroconf(interfaces=list(iface.ipv4), ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError, ValueError) as exc:
        log.warning("mDNS cannot use interface %s: %s", iface.name, exc)
        return None
    isolate(aiozc.zeroconf, iface.name)
    return aiozc


async def check_interface(iface: Interface) -> str | None:
    """None when an mDNS responder can run on ``iface`` (for ``doctor``); otherwise why it cannot."""
    if not iface.ipv4:
        return "no IPv4 address"
    if not iface.multicast and not iface.is_loopback:  # loopback carries multicast without the flag
        return "the interface does not do multicast (no MULTICAST flag)"
    try:
        aiozc = AsyncZeroconf(interfaces=list(iface.ipv4), ip_version=IPVersion.V4Only)
    except (OSError, RuntimeError, ValueError) as exc:
        return f"cannot open an mDNS socket: {exc}"
    try:
        isolate(aiozc.zeroconf, iface.name)
        await aiozc.zeroconf.async_wait_for_start(timeout=2.0)
    except (OSError, RuntimeError, TimeoutError, NotRunningException) as exc:
        return f"mDNS did not start: {exc or type(exc).__name__}"
    finally:
        await aiozc.async_close()
    return None


def isolate(zc: Zeroconf, ifname: str) -> None:
    """Make the shared wildcard listening socket hear only ``ifname`` (Linux).

    Every instance binds 0.0.0.0:5353 with SO_REUSEPORT. Without this, a query that arrived on the
    overlay could be taken and answered (by unicast, routed back over the overlay) by the LAN instance,
    leaking LAN addresses; seen in the namespace tests. SO_BINDTODEVICE pins the socket to its link;
    IP_MULTICAST_ALL=0 is the fallback where binding to a device is not permitted.
    """
    if not sys.platform.startswith("linux"):
        return
    sock = getattr(zc.engine, "_listen_socket", None)
    if not isinstance(sock, socket.socket):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_BINDTODEVICE", 25), ifname.encode())
    except OSError as exc:
        log.debug("cannot bind the mDNS socket to %s: %s", ifname, exc)


def send_qm_query(zc: Zeroconf, types: list[str]) -> None:
    """One PTR query for ``types`` asking for multicast answers (see the note at the top)."""
    for type_ in types:  # one question per packet: a lone PTR question is answered without delay
        out = DNSOutgoing(_DNS_FLAGS_QUERY)
        out.add_question(DNSQuestion(type_, _DNS_TYPE_PTR, _DNS_CLASS_IN))
        zc.async_send(out)


def refresh_queued_answers(zc: Zeroconf, info: AsyncServiceInfo) -> None:
    """Swap the TXT record of ``info`` into answers python-zeroconf has queued but not sent yet.

    A responder holds back answers to records it multicast within the last second (RFC 6762
    section 14) and aggregates others; the queued answers carry the records as they were when the
    question arrived. Without this, an answer queued just before a TXT update goes out up to ~1.3 s
    *after* the update with the old state, and every browser's cache (``list --watch``) keeps it
    until the next change. The queues are internal to python-zeroconf: if they are not shaped as
    expected nothing is touched.
    """
    fresh = info.dns_text()
    key = fresh.key
    for queue in (getattr(zc, "out_queue", None), getattr(zc, "out_delay_queue", None)):
        for group in getattr(queue, "queue", ()):
            answers = getattr(group, "answers", None)
            if not isinstance(answers, dict):
                continue
            for record in list(answers):
                extra = answers[record]
                if isinstance(extra, set) and any(is_txt(r, key) for r in extra):
                    answers[record] = {r for r in extra if not is_txt(r, key)} | {fresh}
                if is_txt(record, key):
                    answers[fresh] = answers.pop(record)


def is_txt(record: object, key: str) -> bool:
    return getattr(record, "type", None) == _DNS_TYPE_TXT and getattr(record, "key", None) == key
