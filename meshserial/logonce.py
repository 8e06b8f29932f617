"""Log a peer's misbehaviour at most once per peer and reason, with bounded memory."""

from __future__ import annotations

import logging
from collections import OrderedDict


class LogOnce:
    """Remembers the last ``capacity`` (peer, reason) pairs it has logged."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        capacity: int = 4096,
        level: int = logging.WARNING,
        message: str = "%s: %s",
    ) -> None:
        """``message`` is a %-format taking the peer and the reason."""
        self._logger = logger
        self._message = message
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._capacity = capacity
        self._level = level

    def warning(self, peer: str, reason: str, detail: str = "") -> bool:
        """Log ``reason`` for ``peer`` unless already done; return whether it was logged."""
        key = (peer[:128], reason[:128])
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        if detail:
            self._logger.log(self._level, self._message + " (%s)", key[0], key[1], detail)
        else:
            self._logger.log(self._level, self._message, key[0], key[1])
        return True
