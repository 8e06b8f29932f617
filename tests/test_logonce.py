"""LogOnce: once per peer and reason, repeats summarised per window, a budget on new lines."""

from __future__ import annotations

import logging

import pytest

from meshserial.logonce import LogOnce


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_once_per_peer_and_reason_numbers_do_not_make_a_new_reason(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    once = LogOnce(logging.getLogger("t1"), clock=clock)
    with caplog.at_level(logging.WARNING):
        assert once.warning("198.18.0.1", "frame of 65531 bytes outside [96, 1024]")
        assert not once.warning("198.18.0.1", "frame of 7 bytes outside [96, 1024]")
        assert once.warning("198.18.0.2", "frame of 7 bytes outside [96, 1024]")
        assert once.warning("198.18.0.1", "handshake not completed in time")
    assert _lines(caplog) == [
        "198.18.0.1: frame of 65531 bytes outside [96, 1024]",
        "198.18.0.2: frame of 7 bytes outside [96, 1024]",
        "198.18.0.1: handshake not completed in time",
    ]


def test_repeats_are_summarised_once_the_window_has_passed(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    once = LogOnce(logging.getLogger("t2"), clock=clock, window=10.0)
    with caplog.at_level(logging.WARNING):
        once.warning("127.0.0.1", "invite not accepted", repeats="failed invite proofs")
        for _ in range(873):
            clock.now += 0.001
            once.warning("127.0.0.1", "invite not accepted", repeats="failed invite proofs")
        once.flush()
        assert len(caplog.records) == 1  # the window is not over yet
        clock.now += 10
        once.flush()
        once.flush()  # a second flush has nothing more to say
    assert _lines(caplog)[1:] == ["127.0.0.1: 873 failed invite proofs in the last 10 s"]


def test_many_peers_meet_the_budget_and_get_one_summary(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    once = LogOnce(logging.getLogger("t3"), clock=clock, budget=5)
    with caplog.at_level(logging.WARNING):
        for i in range(1000):
            once.warning(f"2001:db8:{i:x}::/64", "handshake not completed in time")
        assert len(caplog.records) == 5
        clock.now += 10
        once.flush()
    assert _lines(caplog)[-1] == "995 more messages about 995 peers not shown in the last 10 s"


def test_memory_is_bounded(clock: Clock) -> None:
    once = LogOnce(logging.getLogger("t4"), clock=clock, capacity=100, budget=10**9)
    for i in range(10_000):
        once.warning(f"peer{i}", "reason")
    assert len(once._seen) == 100
