"""The client's session memory and reconnect schedule, sans-IO."""

from __future__ import annotations

import pytest

from meshserial.proto import session as sess
from meshserial.proto.client_session import Attempt, ClientSession, Restarted, Resumed, State


def _accept(session: str, *, rx: int = 0, lost: int = 0) -> sess.Accept:
    return sess.Accept(port="p", mode="rw", session=session, rx=rx, lost=lost)


def test_first_hello_then_resume_with_offsets() -> None:
    client = ClientSession(sess.Hello(port="p", features=("device",)), jitter=lambda: 1.0)
    assert client.hello() == sess.Hello(port="p", features=("device",))
    assert client.accepted(_accept("a")) == Restarted(in_flight=0, first=True)
    assert client.state is State.CARRIED and client.stream is not None
    client.stream.record(b"hello")
    client.stream.count(3, now=0.0)
    assert client.hello() == sess.Hello(port="p", session="a", rx=3, tx=5, features=("device",))
    assert client.accepted(_accept("a", lost=2)) == Resumed(lost=2)


def test_a_new_session_after_the_server_forgot_ours() -> None:
    client = ClientSession(sess.Hello(port="p"), jitter=lambda: 1.0)
    client.accepted(_accept("a"))
    assert client.stream is not None
    client.stream.record(b"in flight")
    old = client.stream
    assert client.accepted(_accept("b")) == Restarted(in_flight=9, first=False)
    assert client.session_id == "b" and client.stream is not old and client.stream.sent == 0


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    jitters = iter([1.25, 0.75, 1.0, 1.0, 1.0, 1.0])
    client = ClientSession(
        sess.Hello(port="p"), jitter=lambda: next(jitters), first_backoff=0.1, max_backoff=0.3
    )
    client.accepted(_accept("a"))
    client.connection_lost(now=10.0)
    assert client.state is State.WAITING and client.lost_at == 10.0
    assert client.next_timer() == 10.0, "the first attempt after a loss is immediate"
    assert client.handle_timer(9.0) is None
    assert client.handle_timer(10.0) == Attempt()
    assert client.next_timer() is None
    waits = []
    for _ in range(4):
        client.attempt_started()
        assert client.state is State.CONNECTING
        client.failed(now=20.0, final=False)
        at = client.next_timer()
        assert at is not None
        waits.append(round(at - 20.0, 6))
    assert waits == [0.125, 0.15, 0.3, 0.3]
    assert client.attempts == 4
    client.accepted(_accept("a"))
    assert client.attempts == 0
    client.connection_lost(now=30.0)
    client.failed(now=30.0, final=False)
    assert client.next_timer() == pytest.approx(30.1)


def test_a_final_failure_ends_the_session_for_good() -> None:
    client = ClientSession(sess.Hello(port="p"), jitter=lambda: 1.0)
    client.accepted(_accept("a"))
    client.connection_lost(now=1.0)
    client.failed(now=1.0, final=True)
    assert client.state is State.ENDED and client.next_timer() is None
    client.connection_lost(now=2.0)  # nothing revives an ended session
    assert client.state is State.ENDED and client.handle_timer(3.0) is None
