"""A cut anywhere loses nothing: two sans-IO endpoints through a simulated network (tests/proto/simlink).

Whatever happens to the connections — a cut at any byte offset, at any moment, noticed at once or only
by the keepalive, data in one-byte pieces or large chunks, late bytes of a dead connection — every
byte each application writes reaches the other side exactly once and in order, the session is resumed
(never restarted), and nothing grows without bound.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from meshserial.proto.resume import ReplayBuffer
from tests.proto.simlink import KEEPALIVE, World

HARD_LIMIT = ReplayBuffer().hard_limit


def _up(world: World) -> None:
    """Until the client carries its session again (reconnects are immediate, then back off)."""
    for _ in range(200):
        if world.client.carried and world.link is not None and world.link.up:
            return
        world.advance(0.5)
        world.settle()
    raise AssertionError("the client did not get its session back")


def _finish(world: World, chunk: int | None = None) -> None:
    """Heal the network and let everything in flight arrive (acknowledgements included)."""
    _up(world)
    world.settle(chunk=chunk)
    world.advance(1.0)
    world.settle(chunk=chunk)


def _check(world: World) -> None:
    assert bytes(world.server.received) == bytes(world.client.written), "client → server"
    assert bytes(world.client.received) == bytes(world.server.written), "server → client"
    assert world.client.restarts == 0, "the session was restarted"


def _start() -> World:
    world = World()
    world.dial()
    world.settle()
    assert world.client.carried
    return world


def _deliver_up_to(world: World, budget: int, direction: str) -> int:
    """Run the current connection, delivering at most ``budget`` bytes in ``direction`` (and
    everything the other way); return how many went."""
    link = world.link
    assert link is not None
    sent = 0
    for _ in range(10_000):
        queue = getattr(link, direction)
        take = min(len(queue), budget - sent)
        other = "to_client" if direction == "to_server" else "to_server"
        if not take and not getattr(link, other):
            break
        world.pump(link, **{direction: take, other: None})
        sent += take
    return sent


def _scenario(world: World) -> None:
    """What the applications do once the session is up: a hundred bytes each way. (Before the client
    has its ``accept`` there is no session for it to have bytes in: a server that started one whose
    ``accept`` was cut replaces it when the client comes back, as a crashed client's.)"""
    if world.client.carried:
        world.client.write(100)
        world.server.write(100)


@pytest.mark.parametrize("direction", ["to_server", "to_client"])
def test_a_cut_at_every_byte_offset_loses_nothing(direction: str) -> None:
    """The first connection is cut after each possible number of bytes delivered one way: during
    the handshake, the hello and accept, and the data. Whatever was cut, the next connection resumes
    (or, cut before any accept, starts the one session)."""
    probe = World()
    probe.dial()
    probe.settle()
    _scenario(probe)
    _deliver_up_to(probe, 10**9, direction)
    total = len(probe.server.received if direction == "to_server" else probe.client.received)
    transcript = World()
    transcript.dial()
    length = _deliver_up_to(transcript, 10**9, direction)
    assert length > 0 and total == 100
    for offset in range(length + 300):
        world = World()
        world.dial()
        _deliver_up_to(world, min(offset, length), direction)
        _scenario(world)
        if offset > length:
            _deliver_up_to(world, offset - length, direction)
        world.cut(world.link)  # type: ignore[arg-type]
        world.client.write(7)  # written during the outage
        _finish(world)
        _check(world)


def test_a_cut_in_every_handshake_of_a_reconnect_loses_nothing() -> None:
    """Cut the *reconnecting* connection at every offset of its handshake: the next one resumes."""
    probe = _start()
    probe.cut(probe.link)  # type: ignore[arg-type]
    probe.reconnect()
    handshake = probe.links[-1]
    # Bytes the second connection needed to come up, both ways (measured on a probe run).
    length = 400
    for offset in range(0, length, 3):
        world = _start()
        world.client.write(50)
        world.server.write(50)
        world.settle()
        world.cut(world.link)  # type: ignore[arg-type]
        world.client.write(11)
        world.server.write(13)
        world.advance(0.0)  # the client dials again
        second = world.links[-1]
        world.pump(second, to_server=offset, to_client=offset)
        world.cut(second)
        _finish(world)
        _check(world)
    assert handshake is not None


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("client writes"), st.integers(1, 4000)),
        st.tuples(st.just("server writes"), st.integers(1, 4000)),
        st.tuples(st.just("pump"), st.integers(1, 70_000)),
        st.tuples(st.just("pump bytes"), st.integers(1, 64)),
        st.tuples(
            st.just("cut"), st.sampled_from(["both notice", "client notices", "server notices", "nobody"])
        ),
        st.tuples(st.just("time passes"), st.floats(0.0, 2.5 * KEEPALIVE)),
        st.tuples(st.just("late bytes"), st.integers(1, 200)),
    ),
    max_size=40,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, chunk=st.sampled_from([None, 1, 7, 4096]))
def test_anything_the_network_does_loses_nothing(ops: list[tuple[str, object]], chunk: int | None) -> None:
    world = _start()
    dead: list[tuple[object, bytes]] = []  # (link, bytes) of cut connections, delivered late
    for op, arg in ops:
        link = world.link
        match op:
            case "client writes":
                world.client.write(int(arg))  # type: ignore[call-overload]
            case "server writes":
                world.server.write(int(arg))  # type: ignore[call-overload]
            case "pump" if link is not None:
                world.pump(link, to_server=int(arg), to_client=int(arg))  # type: ignore[call-overload]
            case "pump bytes" if link is not None:
                for _ in range(int(arg)):  # type: ignore[call-overload]
                    world.pump(link, to_server=1, to_client=1)
            case "cut" if link is not None:
                dead.append((link, bytes(link.to_server)))
                world.cut(
                    link,
                    server_notices=arg in ("both notice", "server notices"),
                    client_notices=arg in ("both notice", "client notices"),
                )
            case "time passes":
                world.advance(float(arg))  # type: ignore[arg-type]
                world.settle(chunk=chunk)
            case "late bytes" if dead:
                # What a dead connection still had in flight turns up after all: it must be ignored.
                old, data = dead.pop(0)
                world.server.deliver(old, data[: int(arg)])  # type: ignore[arg-type, call-overload]
        _bounded(world)
    _finish(world, chunk=chunk)
    _check(world)
    _bounded(world)
    event(f"connections: {min(len(world.links), 5)}{'+' if len(world.links) > 5 else ''}")


def _bounded(world: World) -> None:
    stream = world.client.session.stream
    if stream is not None:
        assert stream.unacknowledged <= HARD_LIMIT
    for session in world.server.table.sessions:
        assert session.stream.unacknowledged <= HARD_LIMIT
    assert len(world.server.conns) <= len(world.links)


def test_the_keepalive_notices_a_silent_server_exactly_on_time() -> None:
    world = _start()
    conn = world.client.conn
    assert conn is not None
    last_heard = world.clock.now
    world.cut(world.link, server_notices=False, client_notices=False)  # type: ignore[arg-type]
    # Run the client's timers one by one, on the simulated clock: pings go out, nothing comes back.
    for _ in range(100):
        due = conn.next_timer()
        assert due is not None
        world.clock.now = due
        if world.client.tick() is not None or world.client.conn is None:
            break
    assert world.client.conn is None, "the client did not give up on the connection"
    assert world.clock.now == pytest.approx(last_heard + KEEPALIVE, abs=1e-9)
