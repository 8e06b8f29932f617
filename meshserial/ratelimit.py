"""Who a network peer is for the purpose of limits, and token buckets to limit it.

A *source* is what one party can cheaply multiply: an IPv4 address, or the /64 of an IPv6 address (a
single host is routinely given a whole /64, so counting its addresses one by one would let it take a
limit 2**64 times). IPv4-mapped IPv6 addresses count as the IPv4 address they map.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict


def source_key(address: str) -> str:
    """The source ``address`` belongs to (see the module docstring); odd strings are cut, not parsed."""
    host = address
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TokenBuckets:
    """One token bucket per key, in a bounded table: an attacker with many sources only evicts old ones.

    Each bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; :meth:`take`
    spends one.
    """

    def __init__(self, rate: float, burst: int, *, max_keys: int = 10_000) -> None:
        self._rate, self._burst, self._max = rate, float(burst), max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def available(self, key: str, now: float) -> bool:
        """Whether ``key`` has a token now (nothing is spent)."""
        tokens, last = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + max(0.0, now - last) * self._rate) >= 1.0

    def take(self, key: str, now: float) -> float:
        """Spend one token of ``key``'s bucket; return 0 if there was one, else the seconds until
        there will be (nothing is spent then)."""
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate if self._rate > 0 else 3600.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
