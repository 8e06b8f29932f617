"""Log a peer's misbehaviour once per peer and reason, summarise repeats, bound the total.

A peer that sends garbage a thousand times a second must not write a thousand log lines: the first
occurrence of each (peer, reason) is logged in full; repeats are only counted, and once the window
(10 s) has passed one summary line says how many there were ("198.18.0.7: 873 failed invite proofs in
the last 10 s"). Numbers in a reason do not make a new reason ("frame of 65531 bytes" and "frame of 7
bytes" are one), so a peer cannot mint fresh log lines by varying a value. On top of that, a sender with
many addresses meets a global budget of new lines per window; what goes over it is summarised as well.

Memory is bounded: at most ``capacity`` (peer, reason) pairs are remembered, oldest forgotten first.
Summaries are written when the next event arrives after the window, or by :func:`flush_all`, which a
long-running server calls periodically. Thread-safe: discovery logs from zeroconf's thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW = 10.0
NEW_LINES_PER_WINDOW = 40
_NUMBER = re.compile(r"\d+")

_instances: weakref.WeakSet[LogOnce] = weakref.WeakSet()


def flush_all(now: float | None = None) -> None:
    """Write every summary whose window has ended (a server calls this every few seconds)."""
    for instance in list(_instances):
        instance.flush(now)


@dataclass(slots=True)
class _Seen:
    reason: str
    repeats: int = 0  # since the last line about this pair
    noun: str | None = None


class LogOnce:
    """See the module docstring. ``message`` is a %-format taking the peer and the reason."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        capacity: int = 4096,
        level: int = logging.WARNING,
        message: str = "%s: %s",
        window: float = WINDOW,
        budget: int = NEW_LINES_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._message = message
        self._capacity = capacity
        self._level = level
        self._window = window
        self._budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()
        self._due: deque[tuple[float, tuple[str, str]]] = deque()  # pairs with repeats to summarise
        self._budget_start = -float("inf")
        self._budget_used = 0
        self._over_budget = 0
        self._over_budget_peers: set[str] = set()
        _instances.add(self)

    def warning(self, peer: str, reason: str, detail: str = "", *, repeats: str | None = None) -> bool:
        """Log ``reason`` for ``peer`` unless that pair was logged before; return whether it was.

        ``repeats`` names the event in the plural for the summary line ("failed invite proofs");
        without it the summary quotes the reason.
        """
        peer = peer[:128]
        key = (peer, _NUMBER.sub("#", reason[:128]))
        with self._lock:
            now = self._clock()
            self._flush_locked(now)
            seen = self._seen.get(key)
            if seen is not None:
                self._seen.move_to_end(key)
                if seen.repeats == 0:
                    self._due.append((now, key))
                seen.repeats += 1
                seen.noun = repeats
                return False
            if not self._spend(now):
                self._note_over_budget(peer, 1)
                return False
            self._seen[key] = _Seen(reason=reason[:128], noun=repeats)
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
        if detail:
            self._logger.log(self._level, self._message + " (%s)", peer, reason[:128], detail[:256])
        else:
            self._logger.log(self._level, self._message, peer, reason[:128])
        return True

    def flush(self, now: float | None = None) -> None:
        """Write the summaries whose window has ended."""
        with self._lock:
            self._flush_locked(self._clock() if now is None else now)

    def _spend(self, now: float) -> bool:
        """Take one line from this window's budget (first lines and summaries alike)."""
        if now - self._budget_start >= self._window:
            self._budget_start, self._budget_used = now, 0
        if self._budget_used >= self._budget:
            return False
        self._budget_used += 1
        return True

    def _note_over_budget(self, peer: str, count: int) -> None:
        self._over_budget += count
        if len(self._over_budget_peers) < 1024:
            self._over_budget_peers.add(peer)

    def _flush_locked(self, now: float) -> None:
        window = self._window
        if self._over_budget and now - self._budget_start >= window:
            peers = len(self._over_budget_peers)
            self._logger.log(
                self._level,
                "%d more messages about %d%s peers not shown in the last %g s",
                self._over_budget,
                peers,
                "+" if peers >= 1024 else "",
                window,
            )
            self._over_budget = 0
            self._over_budget_peers.clear()
        while self._due and now - self._due[0][0] >= window:
            _, key = self._due.popleft()
            seen = self._seen.get(key)
            if seen is None or seen.repeats == 0:
                continue
            repeats, seen.repeats = seen.repeats, 0
            if not self._spend(now):
                self._note_over_budget(key[0], repeats)
                continue
            what = seen.noun or f"repeats of: {seen.reason}"
            self._logger.log(self._level, "%s: %d %s in the last %g s", key[0], repeats, what, window)
