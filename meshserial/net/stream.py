"""A session's byte stream that outlives its connections.

``SessionStream`` sits between the secure connection (which may die and be replaced) and the RFC 2217
protocol above it (which must not notice). It numbers the bytes of both directions, keeps what it sent
until the peer acknowledges it (:class:`~meshserial.proto.resume.ReplayBuffer`), acknowledges what it
receives, and on a new connection sends again whatever the peer says it has not received.

The replay buffer is also the flow-control window: above its soft limit the protocol above is paused,
exactly as an asyncio transport pauses its protocol when its write buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from meshserial.proto.resume import DEFAULT_LIMIT, ReceiveCounter, ReplayBuffer

log = logging.getLogger(__name__)

ACK_DELAY = 0.05  # acknowledge small amounts of data at most this late
ACK_EVERY = 256 * 1024  # and large amounts every this many bytes (a quarter of the default window)


class Carrier(Protocol):
    """The connection currently carrying the stream (a secure connection)."""

    peer_id: bytes | None

    def send_plain(self, data: bytes) -> None: ...

    def send_ack(self, offset: int) -> None: ...

    def close(self, reason: str | None = None) -> None: ...

    def tcp_pause_reading(self) -> None: ...

    def tcp_resume_reading(self) -> None: ...

    def tcp_info(self, name: str, default: Any = None) -> Any: ...

    def tcp_buffer_size(self) -> int: ...


class StreamUser(Protocol):
    """The protocol above the stream (RFC 2217): an asyncio protocol's callbacks."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class StreamTransport(asyncio.Transport):
    """The stable transport the RFC 2217 protocol writes to, whatever connection is underneath."""

    def __init__(self, stream: SessionStream) -> None:
        super().__init__()
        self._stream = stream
        # Every byte the protocol above sends goes straight to the stream's own write.
        self.write = stream.write  # type: ignore[method-assign]

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self._stream.end()

    def abort(self) -> None:
        self._stream.end()

    def is_closing(self) -> bool:
        return self._stream.ended

    def pause_reading(self) -> None:
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def is_reading(self) -> bool:
        return not self._stream.reading_paused

    def get_write_buffer_size(self) -> int:
        """What the session holds towards its peer: unacknowledged bytes (kept for a resume) plus what
        still waits in the current connection's socket buffer."""
        carrier = self._stream.carrier
        queued = carrier.tcp_buffer_size() if carrier is not None else 0
        return self._stream.replay.size + queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        carrier = self._stream.carrier
        if name == "peer_id":
            return carrier.peer_id if carrier is not None else default
        return carrier.tcp_info(name, default) if carrier is not None else default


class SessionStream:
    """Both directions of one session; see the module docstring."""

    def __init__(
        self,
        inner: StreamUser,
        *,
        replay_limit: int = DEFAULT_LIMIT,
        on_detached: Callable[[SessionStream, BaseException | None], None] | None = None,
    ) -> None:
        self.inner = inner
        self.replay = ReplayBuffer(replay_limit)
        self.counter = ReceiveCounter(every=ACK_EVERY)
        self.carrier: Carrier | None = None
        self.ended = False
        self.reading_paused = False
        self._on_detached = on_detached
        self._window_paused = False
        self._tcp_paused = False
        self._inner_paused = False
        self._ack_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._started = False

    # ---- life cycle --------------------------------------------------------------------------------

    def attach(self, carrier: Carrier, peer_received: int) -> int:
        """Carry the stream on ``carrier``; resend what the peer lacks. Returns bytes that cannot be
        resent (0 unless the replay buffer overflowed)."""
        self.carrier = carrier
        self._tcp_paused = False
        data, lost = self.replay.since(peer_received)
        log.debug(
            "stream attached: peer has %d, resending %d, we received %d, reading paused %s",
            peer_received,
            len(data),
            self.counter.received,
            self.reading_paused,
        )
        if data:
            carrier.send_plain(data)
        if self.reading_paused:
            carrier.tcp_pause_reading()
        if not self._started:
            self._started = True
            self.inner.connection_made(StreamTransport(self))
        self._update_pause()
        return lost

    def detach(self, exc: BaseException | None) -> None:
        """The carrier is gone without ending the session (a network failure)."""
        if self.carrier is None:
            return
        self.carrier = None
        self._cancel_ack()
        if not self.ended and self._on_detached is not None:
            self._on_detached(self, exc)

    def end(self, reason: str | None = None) -> None:
        """End the session for good: tell the peer (CLOSE) and the protocol above."""
        if self.ended:
            return
        self.ended = True
        self._cancel_ack()
        carrier, self.carrier = self.carrier, None
        if carrier is not None:
            carrier.close(reason)
        self._lose_inner(None)

    def ended_by_peer(self, exc: BaseException | None = None) -> None:
        """The peer closed the session on purpose (its CLOSE arrived), or it cannot go on."""
        if self.ended:
            return
        self.ended = True
        self.carrier = None
        self._cancel_ack()
        self._lose_inner(exc)

    def _lose_inner(self, exc: BaseException | None) -> None:
        if self._started:
            self.inner.connection_lost(exc if isinstance(exc, Exception) else None)

    # ---- from the protocol above ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.ended or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the replay buffer keeps it: it must not change under us
        # Send first, then the bookkeeping: the peer can start on the data meanwhile. Nothing in
        # between can observe the replay buffer (a failed send is reported later, by the loop).
        if self.carrier is not None:
            self.carrier.send_plain(data)
        if self.replay.append(data) and not self._inner_paused:
            self._update_pause()

    def pause_reading(self) -> None:
        self.reading_paused = True
        if self.carrier is not None:
            self.carrier.tcp_pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        if self.carrier is not None:
            self.carrier.tcp_resume_reading()

    # ---- from the carrier ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        self.inner.data_received(data)  # deliver first, count after (the same call either way)
        if self.counter.add(len(data)):
            self._send_ack()
        elif self._ack_timer is None:
            self._ack_timer = self._loop.call_later(ACK_DELAY, self._send_ack)

    def ack_received(self, offset: int) -> None:
        self.replay.ack(offset)
        self._update_pause()

    def tcp_pause(self) -> None:
        self._tcp_paused = True
        self._update_pause()

    def tcp_resume(self) -> None:
        self._tcp_paused = False
        self._update_pause()

    # ---- internals -----------------------------------------------------------------------------------

    def _send_ack(self) -> None:
        self._ack_timer = None
        if self.carrier is not None and self.counter.pending:
            self.carrier.send_ack(self.counter.mark_acknowledged())

    def _cancel_ack(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _update_pause(self) -> None:
        paused = self.replay.over_soft_limit or self._tcp_paused
        if paused and not self._inner_paused and self._started:
            self._inner_paused = True
            log.debug("stream paused (unacknowledged %d, tcp paused %s)", self.replay.size, self._tcp_paused)
            self.inner.pause_writing()
        elif not paused and self._inner_paused:
            self._inner_paused = False
            log.debug("stream resumed (unacknowledged %d)", self.replay.size)
            self.inner.resume_writing()
