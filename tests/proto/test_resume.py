"""Resume bookkeeping: the replay buffer against a model of the whole stream, and the ack counter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshserial.errors import ProtocolError
from meshserial.proto.resume import DEFAULT_LIMIT, ReceiveCounter, ReplayBuffer


def test_limits() -> None:
    assert ReplayBuffer().limit == DEFAULT_LIMIT
    assert ReplayBuffer(10).hard_limit == 20, "the hard limit defaults to twice the soft one"
    assert ReplayBuffer(10, hard_limit=15).hard_limit == 15
    for limit in (0, -1):
        with pytest.raises(ValueError, match="positive"):
            ReplayBuffer(limit)


def test_append_reports_the_soft_limit() -> None:
    buf = ReplayBuffer(4)
    assert buf.append(b"abcd") is False, "at the limit is not over it"
    assert not buf.over_soft_limit
    assert buf.append(b"") is False
    assert (buf.size, buf.sent) == (4, 4)
    assert buf.append(b"e") is True
    assert buf.over_soft_limit
    buf.ack(1)
    assert not buf.over_soft_limit


def test_ack_discards_whole_and_partial_chunks() -> None:
    buf = ReplayBuffer(100)
    for chunk in (b"abc", b"def", b"ghi"):
        buf.append(chunk)
    buf.ack(4)  # one whole chunk and one byte of the next
    assert (buf.acked, buf.start, buf.size) == (4, 4, 5)
    assert buf.since(4) == (b"efghi", 0)
    buf.ack(2)  # stale: nothing changes
    buf.ack(4)  # repeated
    assert (buf.acked, buf.size) == (4, 5)
    buf.ack(9)
    assert (buf.acked, buf.start, buf.size) == (9, 9, 0)
    assert buf.since(9) == (b"", 0)


def test_ack_beyond_what_was_sent_is_a_protocol_error() -> None:
    buf = ReplayBuffer(100)
    buf.append(b"abc")
    with pytest.raises(ProtocolError, match="offset 4 beyond the 3 bytes"):
        buf.ack(4)
    with pytest.raises(ProtocolError, match="resume from offset 4 beyond the 3 bytes"):
        buf.since(4)
    assert (buf.acked, buf.size) == (0, 3)


def test_since_acknowledges_what_the_peer_has() -> None:
    buf = ReplayBuffer(100)
    buf.append(b"hello ")
    buf.append(b"world")
    assert buf.since(0) == (b"hello world", 0), "a resume from the start keeps everything"
    assert buf.acked == 0
    assert buf.since(6) == (b"world", 0)
    assert (buf.acked, buf.start) == (6, 6)
    assert buf.since(3) == (b"world", 3), "the peer is behind what was already acknowledged"


def test_hard_limit_drops_the_oldest_and_counts_the_loss() -> None:
    buf = ReplayBuffer(4, hard_limit=8)
    for chunk in (b"0123", b"4567", b"89"):
        buf.append(chunk)
    assert (buf.start, buf.size, buf.acked) == (4, 6, 0)
    assert buf.since(0) == (b"456789", 4)
    buf.ack(2)  # an acknowledgement of bytes already dropped moves nothing else
    assert (buf.acked, buf.start, buf.size) == (2, 4, 6)
    assert buf.since(5) == (b"56789", 0)
    buf.append(b"x" * 20)  # one write over the hard limit: nothing can be kept
    assert (buf.size, buf.start, buf.sent) == (0, 30, 30)
    assert buf.since(5) == (b"", 25)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 16),
    extra=st.integers(0, 16),
    steps=st.lists(st.tuples(st.booleans(), st.binary(max_size=12), st.integers(0, 100)), max_size=40),
)
def test_buffer_matches_a_model_of_the_stream(
    limit: int, extra: int, steps: list[tuple[bool, bytes, int]]
) -> None:
    """Whatever the writes and acknowledgements, a resume gives the stream from the asked offset,
    except the bytes dropped at the hard limit, which it counts."""
    buf = ReplayBuffer(limit, hard_limit=limit + extra)
    stream = b""
    acked = 0
    for is_write, data, wanted in steps:
        if is_write:
            stream += data
            assert buf.append(data) is (buf.size > limit)
        else:
            offset = min(wanted, len(stream))
            buf.ack(offset)
            acked = max(acked, offset)
        assert buf.sent == len(stream)
        assert buf.acked == acked
        assert buf.size == len(stream) - buf.start <= limit + extra
        assert buf.start >= acked
    offset = min(acked + 3, len(stream))
    held, lost = buf.since(offset)
    assert lost == max(0, buf.start - offset)
    assert held == stream[max(offset, buf.start) :]


def test_receive_counter() -> None:
    counter = ReceiveCounter(every=10)
    assert not counter.pending
    assert counter.add(9) is False
    assert counter.pending
    assert counter.add(1) is True, "an acknowledgement is due every 10 bytes"
    assert counter.mark_acknowledged() == 10
    assert not counter.pending
    assert counter.add(25) is True
    assert counter.add(0) is True, "still due until marked"
    assert counter.mark_acknowledged() == 35
    assert ReceiveCounter().every == 64 * 1024
