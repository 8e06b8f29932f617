"""One session's byte stream across connections, sans-IO: numbering, replay, acknowledgements.

Why: a session must outlive its TCP connections (a Wi-Fi blip, a dead path, a re-routed VPN), with no
byte lost or repeated. Each direction of a session is therefore one byte stream numbered from offset 0,
independent of the connection that carries it at the moment. The sender keeps what it sent in a
:class:`~meshserial.proto.resume.ReplayBuffer` until the receiver acknowledges it; the receiver counts
what it got (:class:`~meshserial.proto.resume.ReceiveCounter`) and acknowledges it: at once after
:data:`ACK_EVERY` bytes, otherwise within :data:`ACK_DELAY` seconds of the first unacknowledged byte.
After a reconnect each side says how much it has received and the other sends again what lies beyond.

The replay buffer is also the flow-control window: while more than :data:`WINDOW` bytes are
unacknowledged the producer should stop (:attr:`Stream.window_full`), as an asyncio transport pauses
its protocol when its buffer fills.

The only timer is the acknowledgement deadline (:meth:`Stream.next_timer`); time comes in as ``now``.
"""

from __future__ import annotations

from meshserial.proto.resume import DEFAULT_LIMIT, ReceiveCounter, ReplayBuffer

WINDOW = DEFAULT_LIMIT  # 1 MiB unacknowledged: the flow-control window
ACK_EVERY = 256 * 1024  # acknowledge large amounts every this many bytes (a quarter of the window)
ACK_DELAY = 0.05  # and small amounts at most this late


class Stream:
    """Both directions of one session (see the module docstring)."""

    __slots__ = ("ack_at", "ack_delay", "counter", "replay")

    def __init__(
        self, *, window: int = WINDOW, ack_every: int = ACK_EVERY, ack_delay: float = ACK_DELAY
    ) -> None:
        self.replay = ReplayBuffer(window)
        self.counter = ReceiveCounter(every=ack_every)
        self.ack_delay = ack_delay
        #: When the pending acknowledgement is due, or ``None`` when nothing waits for one.
        self.ack_at: float | None = None

    # ---- sending ------------------------------------------------------------------------------------

    @property
    def sent(self) -> int:
        """Offset after the last byte sent (or recorded while no connection carried the stream)."""
        return self.replay.sent

    def record(self, data: bytes) -> bool:
        """Keep ``data`` (just sent, or to be sent on the next connection); return :attr:`window_full`."""
        return self.replay.append(data)

    @property
    def window_full(self) -> bool:
        """More than the window is unacknowledged: the producer should pause."""
        return self.replay.over_soft_limit

    @property
    def unacknowledged(self) -> int:
        """Bytes sent and not yet acknowledged (or dropped past the hard limit)."""
        return self.replay.size

    def acked(self, offset: int) -> None:
        """The peer has everything before ``offset``; :class:`ProtocolError` if we never sent it."""
        self.replay.ack(offset)

    def resend(self, peer_received: int) -> tuple[bytes, int]:
        """For a new connection: everything after ``peer_received``, and how many bytes before the
        oldest still kept the peer will never get (0 unless the replay buffer overflowed)."""
        return self.replay.since(peer_received)

    # ---- receiving ----------------------------------------------------------------------------------

    @property
    def received(self) -> int:
        return self.counter.received

    def count(self, n: int, now: float) -> int | None:
        """Count ``n`` received bytes; return the offset to acknowledge now, or ``None`` (then an
        acknowledgement is due by :meth:`next_timer`)."""
        counter = self.counter
        if counter.add(n):
            self.ack_at = None
            return counter.mark_acknowledged()
        if self.ack_at is None:
            self.ack_at = now + self.ack_delay
        return None

    def next_timer(self) -> float | None:
        return self.ack_at

    def handle_timer(self, now: float) -> int | None:
        """The offset to acknowledge if the deadline has passed (``None`` otherwise)."""
        if self.ack_at is None or now < self.ack_at:
            return None
        self.ack_at = None
        return self.counter.mark_acknowledged() if self.counter.pending else None

    def stop_acking(self) -> None:
        """No connection carries the stream: nothing can be acknowledged until one does."""
        self.ack_at = None
