"""The handshake-slot table: a newcomer always gets a slot; the laggards of the biggest source go."""

from __future__ import annotations

from dataclasses import dataclass

from meshserial.net.slots import HandshakeLimiter


@dataclass(eq=False)
class Conn:
    source: str
    started: float
    progress: int = 0
    evicted: bool = False

    def evict(self) -> None:
        self.evicted = True


def test_a_full_table_evicts_the_slowest_of_the_biggest_source() -> None:
    limiter = HandshakeLimiter(per_source=16, total=8)
    flood = [Conn("198.18.0.1", float(t)) for t in range(6)] + [
        Conn("198.18.0.2", 10.0 + t) for t in range(2)
    ]
    flood[0].progress = 1  # got further than the others of its source: not the first to go
    for conn in flood:
        limiter.admit(conn)
    assert len(limiter) == 8
    newcomer = Conn("198.18.0.9", 100.0)
    limiter.admit(newcomer)
    assert [c for c in flood if c.evicted] == [flood[1]]  # oldest with no progress, biggest source
    assert not newcomer.evicted and len(limiter) == 8
    limiter.release(newcomer)
    limiter.release(newcomer)  # idempotent
    assert len(limiter) == 7


def test_a_source_at_its_limit_only_pushes_out_its_own() -> None:
    limiter = HandshakeLimiter(per_source=2, total=100)
    mine = [Conn("198.18.0.1", 1.0), Conn("198.18.0.1", 2.0)]
    other = Conn("198.18.0.2", 0.0)
    for conn in (other, *mine):
        limiter.admit(conn)
    limiter.admit(Conn("198.18.0.1", 3.0))
    assert mine[0].evicted and not mine[1].evicted and not other.evicted


def test_the_deadline_shrinks_as_the_table_fills() -> None:
    limiter = HandshakeLimiter(per_source=1000, total=100)
    assert limiter.deadline(10.0) == 10.0
    for i in range(75):
        limiter.admit(Conn(f"s{i}", 0.0))
    assert limiter.deadline(10.0) == 5.0
    for i in range(75, 100):
        limiter.admit(Conn(f"s{i}", 0.0))
    assert limiter.deadline(10.0) == 1.0  # never below a second
    assert limiter.deadline(0.5) == 0.5  # nor above what was asked
