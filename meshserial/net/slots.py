"""Handshake slots: how many connections may be half-open (accepted, not yet past ``hello``), and who
gives way when they are all taken.

A table that turns newcomers away once it is full lets anyone who fills it with idle or slow
connections lock everybody else out. :class:`HandshakeLimiter` never refuses a newcomer for want of a
slot: it takes the slot of the half-open connection that has made the least progress, and of those
the oldest, in the newcomer's own source when that source is at its limit, else in the source that
holds the most slots. An attacker's connections therefore only push out each other, while a client
that completes its handshake in a few round trips is the newest and furthest along, and is never the
one chosen. The deadline for a handshake also shrinks as the table fills, and a source whose
connections keep coming to nothing (evicted, timed out, failed) is cut off at the door for a while,
before it costs any cryptography.

Sources are IPv4 addresses or IPv6 /64s (:func:`~meshserial.ratelimit.source_key`). Pure bookkeeping:
the connections themselves close when told to.
"""

from __future__ import annotations

from typing import Protocol

from meshserial.ratelimit import TokenBuckets

MAX_PENDING_PER_SOURCE = 16
MAX_PENDING_TOTAL = 256
MIN_HANDSHAKE_DEADLINE = 1.0
WASTED_PER_SOURCE_RATE = 20.0  # failed handshakes per second and source, after a burst of:
WASTED_PER_SOURCE_BURST = 64


class Pending(Protocol):
    """A connection that holds a handshake slot."""

    source: str
    started: float

    @property
    def progress(self) -> int:
        """How far the handshake got (higher is further)."""

    def evict(self) -> None:
        """Give up the slot and close the connection at once."""


class HandshakeLimiter:
    """The slot table (see the module docstring), per source and in total."""

    def __init__(self, *, per_source: int = MAX_PENDING_PER_SOURCE, total: int = MAX_PENDING_TOTAL) -> None:
        self.per_source = per_source
        self.total = total
        # Insertion-ordered dicts used as ordered sets, one per source.
        self._by_source: dict[str, dict[Pending, None]] = {}
        self._count = 0
        self.evicted = 0
        # Handshakes that came to nothing (evicted, timed out, failed), per source: a flood source
        # that reopens whatever we close would otherwise keep a core busy accepting, evicting and
        # answering handshakes. Completed handshakes cost nothing, so a busy legitimate host is
        # never held back.
        self._wasted = TokenBuckets(WASTED_PER_SOURCE_RATE, WASTED_PER_SOURCE_BURST)

    def welcome(self, source: str, now: float) -> bool:
        """Whether a new connection from ``source`` is taken at all (``False``: close it at once)."""
        return self._wasted.available(source, now)

    def wasted(self, source: str, now: float) -> None:
        """A connection from ``source`` ended without completing its handshake."""
        self._wasted.take(source, now)

    def __len__(self) -> int:
        return self._count

    def admit(self, conn: Pending) -> None:
        """Give ``conn`` a slot, evicting a half-open connection if a limit is reached."""
        own = self._by_source.get(conn.source)
        if own is not None and len(own) >= self.per_source:
            self._evict_from(own)
        elif self._count >= self.total:
            self._evict_from(max(self._by_source.values(), key=len))
        self._by_source.setdefault(conn.source, {})[conn] = None
        self._count += 1

    def release(self, conn: Pending) -> None:
        """``conn`` leaves its slot (its handshake ended one way or the other); idempotent."""
        group = self._by_source.get(conn.source)
        if group is None or conn not in group:
            return
        del group[conn]
        self._count -= 1
        if not group:
            del self._by_source[conn.source]

    def deadline(self, timeout: float) -> float:
        """Seconds a new connection gets for its handshake: ``timeout`` while the table is mostly
        empty, less as it fills (down to a tenth, but at least :data:`MIN_HANDSHAKE_DEADLINE`)."""
        free = 1.0 - self._count / self.total if self.total else 0.0
        return min(timeout, max(MIN_HANDSHAKE_DEADLINE, timeout * min(1.0, 2.0 * max(free, 0.05))))

    def _evict_from(self, group: dict[Pending, None]) -> None:
        victim = min(group, key=lambda c: (c.progress, c.started))
        self.release(victim)
        self.evicted += 1
        victim.evict()
