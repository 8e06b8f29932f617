"""The sans-IO session stream: window, acknowledgement timing, resend."""

from __future__ import annotations

import pytest

from meshserial.errors import ProtocolError
from meshserial.proto.stream import Stream


def test_small_amounts_are_acknowledged_after_the_delay() -> None:
    stream = Stream(ack_every=100, ack_delay=0.05)
    assert stream.next_timer() is None
    assert stream.count(10, now=1.0) is None
    assert stream.next_timer() == pytest.approx(1.05)
    assert stream.count(10, now=1.02) is None
    assert stream.next_timer() == pytest.approx(1.05), "the first unacknowledged byte sets the deadline"
    assert stream.handle_timer(1.04) is None
    assert stream.handle_timer(1.05) == 20
    assert stream.next_timer() is None
    assert stream.handle_timer(2.0) is None


def test_large_amounts_are_acknowledged_at_once() -> None:
    stream = Stream(ack_every=100)
    stream.count(50, now=0.0)
    assert stream.count(60, now=0.01) == 110
    assert stream.next_timer() is None


def test_a_deadline_with_nothing_pending_sends_nothing() -> None:
    stream = Stream(ack_every=10)
    stream.count(5, now=0.0)
    assert stream.count(5, now=0.0) == 10  # the threshold acknowledged everything…
    stream.ack_at = 0.1  # …so a deadline that survived (it cannot) would find nothing to say
    assert stream.handle_timer(1.0) is None


def test_stopping_forgets_the_deadline() -> None:
    stream = Stream()
    stream.count(1, now=0.0)
    stream.stop_acking()
    assert stream.next_timer() is None and stream.received == 1


def test_the_window_and_resend() -> None:
    stream = Stream(window=10)
    assert not stream.record(b"12345")
    assert stream.record(b"678901") and stream.window_full
    assert stream.sent == 11 and stream.unacknowledged == 11
    stream.acked(4)
    assert not stream.window_full and stream.unacknowledged == 7
    assert stream.resend(6) == (b"78901", 0)
    with pytest.raises(ProtocolError):
        stream.acked(12)
