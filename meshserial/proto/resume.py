"""Byte-stream bookkeeping that lets a session survive the loss of its connection, sans-IO.

Each direction of a session is one byte stream numbered from offset 0. The sender keeps every byte it
sent in a :class:`ReplayBuffer` until the receiver acknowledges it (``ack`` control messages carry the
receiver's count of bytes received). After a drop the client reconnects, runs a fresh handshake and
says in its ``hello`` how much it has received; the server answers in ``accept`` with its own count;
each side then sends again everything after the other's count. Nothing is lost or duplicated as long
as the unacknowledged bytes fit in the buffer (and, on the server, the session was kept).

The buffer has a soft limit and a hard limit. Above the soft limit the owner should stop producing
(``over_soft_limit``) — that is the session's flow-control window. If a producer ignores that and the
hard limit is passed, the oldest bytes are dropped and :attr:`ReplayBuffer.start` moves past
:attr:`ReplayBuffer.acked`: a resume from before ``start`` then reports how many bytes were lost.
"""

from __future__ import annotations

from collections import deque

from meshserial.errors import ProtocolError

DEFAULT_LIMIT = 1024 * 1024


class ReplayBuffer:
    """Bytes sent on one stream and not yet acknowledged by the peer."""

    def __init__(self, limit: int = DEFAULT_LIMIT, *, hard_limit: int | None = None) -> None:
        if limit <= 0:
            raise ValueError("the replay limit must be positive")
        self.limit = limit
        self.hard_limit = hard_limit if hard_limit is not None else 2 * limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.sent = 0  # offset after the last byte sent
        self.acked = 0  # the peer confirmed everything before this offset
        self.start = 0  # oldest offset still held (== acked unless bytes were dropped)

    @property
    def size(self) -> int:
        """Bytes held: sent but not acknowledged (or dropped)."""
        return self._size

    @property
    def over_soft_limit(self) -> bool:
        return self._size > self.limit

    def append(self, data: bytes) -> bool:
        """Record ``data`` as sent; return :attr:`over_soft_limit`."""
        if data:
            self._chunks.append(data)
            self._size += len(data)
            self.sent += len(data)
            while self._size > self.hard_limit and self._chunks:
                dropped = self._chunks.popleft()
                self._size -= len(dropped)
                self.start += len(dropped)
        return self._size > self.limit

    def ack(self, offset: int) -> None:
        """The peer has received everything before ``offset``."""
        if offset > self.sent:
            raise ProtocolError(f"acknowledgement of offset {offset} beyond the {self.sent} bytes sent")
        if offset <= self.acked:
            return  # stale or repeated
        self.acked = offset
        self._discard_to(offset)

    def _discard_to(self, offset: int) -> None:
        while self._chunks and self.start < offset:
            head = self._chunks[0]
            if self.start + len(head) <= offset:
                self._chunks.popleft()
                self._size -= len(head)
                self.start += len(head)
            else:
                cut = offset - self.start
                self._chunks[0] = head[cut:]
                self._size -= cut
                self.start = offset

    def since(self, offset: int) -> tuple[bytes, int]:
        """Everything sent from ``offset`` on, for a resume; returns ``(bytes, lost)`` where ``lost`` is
        how many bytes before the oldest one still held the peer will never see (0 normally)."""
        if offset > self.sent:
            raise ProtocolError(f"resume from offset {offset} beyond the {self.sent} bytes sent")
        if offset > self.start:
            self.ack(offset)
        lost = max(0, self.start - offset)
        return b"".join(self._chunks), lost


class ReceiveCounter:
    """Counts received bytes and says when an acknowledgement is due."""

    def __init__(self, *, every: int = 64 * 1024) -> None:
        self.received = 0
        self.acknowledged = 0
        self.every = every

    def add(self, n: int) -> bool:
        """Count ``n`` bytes; return whether an acknowledgement should go out now."""
        self.received += n
        return self.received - self.acknowledged >= self.every

    @property
    def pending(self) -> bool:
        return self.received > self.acknowledged

    def mark_acknowledged(self) -> int:
        self.acknowledged = self.received
        return self.received
