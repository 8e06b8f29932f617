"""A session's byte stream as an asyncio transport that outlives its connections.

Why: the RFC 2217 protocol above a secure session must not notice that the connection under it died
and was replaced. :class:`SessionStream` gives it one transport for the whole session; underneath, the
connection currently carrying the session (the *carrier*, a :class:`~meshserial.net.secure.SecureConnection`)
may come and go. The bookkeeping that makes that lossless (numbering, replay, acknowledgements) is the
sans-IO :class:`~meshserial.proto.stream.Stream`; this module only moves bytes and pauses producers:

* what the protocol above writes is sealed and sent on the carrier at once (if there is one) and kept
  in the stream until acknowledged;
* while more than the window is unacknowledged, or the carrier's socket is backed up, the protocol above
  is paused (``pause_writing``), as an asyncio transport does when its buffer fills.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from meshserial.proto.stream import Stream

log = logging.getLogger(__name__)


class Carrier(Protocol):
    """The connection currently carrying the stream (a secure connection)."""

    @property
    def peer_id(self) -> bytes | None: ...

    def send_stream(self, data: bytes) -> None: ...

    def carry(self, stream: SessionStream, peer_received: int) -> int: ...

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
        return self._stream.state.unacknowledged + queued

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        carrier = self._stream.carrier
        if name == "peer_id":
            return carrier.peer_id if carrier is not None else default
        return carrier.tcp_info(name, default) if carrier is not None else default


class SessionStream:
    """One session's stream (see the module docstring)."""

    def __init__(
        self,
        inner: StreamUser,
        *,
        state: Stream | None = None,
        on_detached: Callable[[SessionStream, BaseException | None], None] | None = None,
    ) -> None:
        self.inner = inner
        self.state = state if state is not None else Stream()
        self.carrier: Carrier | None = None
        self.ended = False
        self.reading_paused = False
        self._on_detached = on_detached
        self._tcp_paused = False
        self._inner_paused = False
        self._started = False

    # ---- life cycle --------------------------------------------------------------------------------

    def attach(self, carrier: Carrier, peer_received: int) -> int:
        """Carry the stream on ``carrier``; resend what the peer lacks. Returns bytes that cannot be
        resent (0 unless the replay buffer overflowed)."""
        self.carrier = carrier
        self._tcp_paused = False
        lost = carrier.carry(self, peer_received)
        log.debug(
            "stream attached: peer has %d of %d, we received %d, reading paused %s",
            peer_received,
            self.state.sent,
            self.state.received,
            self.reading_paused,
        )
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
        self.state.stop_acking()
        if not self.ended and self._on_detached is not None:
            self._on_detached(self, exc)

    def end(self, reason: str | None = None) -> None:
        """End the session for good: tell the peer (``deny`` reason and CLOSE) and the protocol above."""
        if self.ended:
            return
        self.ended = True
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
        self._lose_inner(exc)

    def _lose_inner(self, exc: BaseException | None) -> None:
        self.state.stop_acking()
        if self._started:
            self.inner.connection_lost(exc if isinstance(exc, Exception) else None)

    # ---- from the protocol above ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.ended or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the stream keeps it: it must not change under us
        # Send first, then the bookkeeping: the peer can start on the data meanwhile.
        if self.carrier is not None:
            self.carrier.send_stream(data)
        if self.state.record(data) and not self._inner_paused:
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

    def deliver(self, data: bytes) -> None:
        """Session bytes the carrier received (already counted in :attr:`state`)."""
        if not self.ended:
            self.inner.data_received(data)

    def window_opened(self) -> None:
        self._update_pause()

    def tcp_pause(self) -> None:
        self._tcp_paused = True
        self._update_pause()

    def tcp_resume(self) -> None:
        self._tcp_paused = False
        self._update_pause()

    # ---- internals -----------------------------------------------------------------------------------

    def _update_pause(self) -> None:
        paused = self.state.window_full or self._tcp_paused
        if paused and not self._inner_paused and self._started:
            self._inner_paused = True
            log.debug(
                "stream paused (unacknowledged %d, tcp paused %s)",
                self.state.unacknowledged,
                self._tcp_paused,
            )
            self.inner.pause_writing()
        elif not paused and self._inner_paused:
            self._inner_paused = False
            log.debug("stream resumed (unacknowledged %d)", self.state.unacknowledged)
            self.inner.resume_writing()
