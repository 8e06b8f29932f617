"""The server's session table, sans-IO: hello decisions, the writer lock, limits, timers."""

from __future__ import annotations

import itertools

import pytest

from meshserial.proto import session as sess
from meshserial.proto.sessions import Expired, Refuse, Resume, SessionTable, Start, Why

ALICE, BOB = b"a" * 32, b"b" * 32


def _table(**kwargs: int) -> SessionTable:
    ids = itertools.count(1)
    return SessionTable(detach_timeout=60.0, new_id=lambda: f"s{next(ids)}", **kwargs)


def _label(client: bytes) -> str:
    return {ALICE: "alice", BOB: "bob"}[client]


def _admit(table: SessionTable, client: bytes, hello: sess.Hello, *, rights: str | None = "rw",
           exists: bool = True, now: float = 0.0) -> object:  # fmt: skip
    return table.admit(client, hello, rights=rights, port_exists=exists, label=_label, now=now)


def test_refusals_in_order() -> None:
    table = _table()
    hello = sess.Hello(port="gps")
    assert _admit(table, ALICE, hello, rights=None) == Refuse(reason="not authorized for port 'gps'")
    assert _admit(table, ALICE, hello, rights=None, exists=False) == Refuse(
        reason="not authorized for port 'gps'"
    ), "an unknown key learns nothing about which ports exist"
    assert _admit(table, ALICE, hello, rights="ro") == Refuse(
        reason="read-only access to gps: connect with --read-only"
    )
    assert _admit(table, ALICE, hello, exists=False) == Refuse(reason="no port named 'gps' here")
    assert _admit(table, ALICE, sess.Hello(port="gps", mode="ro"), rights="ro") == Start()


def test_resume_only_for_the_same_client_port_and_mode() -> None:
    table = _table()
    hello = sess.Hello(port="gps")
    session = table.start(ALICE, hello)
    session.stream.record(b"x" * 10)
    back = sess.Hello(port="gps", session=session.id, rx=4)
    assert _admit(table, ALICE, back) == Resume(session=session, lost=0)
    table.detached(session, now=5.0)
    # Someone else's id, another port or another mode: not a resume.
    assert not isinstance(_admit(table, BOB, back), Resume)
    assert isinstance(_admit(table, ALICE, sess.Hello(port="other", session=session.id)), Start)
    ro = sess.Hello(port="gps", mode="ro", session=session.id)
    assert isinstance(_admit(table, ALICE, ro), Start)
    assert table.accept(session, lost=1, holder="bob", device=False) == sess.Accept(
        port="gps", mode="rw", session="s1", rx=0, tx=10, lost=1, holder="bob", device=False
    )


def test_an_ended_session_tells_its_client_why() -> None:
    table = _table(max_ended=1)
    first = table.start(ALICE, sess.Hello(port="gps"))
    table.ended(first, "access revoked")
    back = sess.Hello(port="gps", session=first.id)
    assert _admit(table, ALICE, back) == Refuse(reason="access revoked")
    assert isinstance(_admit(table, BOB, sess.Hello(port="gps", session=first.id)), Start), "only its client"
    second = table.start(ALICE, sess.Hello(port="x"))
    table.ended(second, "replaced")
    assert isinstance(_admit(table, ALICE, back), Start), "the oldest reason was forgotten"


def test_the_writer_lock() -> None:
    table = _table()
    mine = table.start(ALICE, sess.Hello(port="gps"))
    hello = sess.Hello(port="gps")
    assert _admit(table, ALICE, hello) == Refuse(
        reason="port gps is in use by another session of yours; stop it, or connect with --takeover to "
        "replace it"
    )
    takeover = sess.Hello(port="gps", takeover=True)
    assert _admit(table, ALICE, takeover) == Start(
        replaced=((mine, "replaced by a new session of the same client"),)
    )
    assert _admit(table, BOB, hello) == Start(), "a live session of another client: the port says who"
    assert _admit(table, BOB, takeover) == Start(), "and takeover does not apply to it"
    table.detached(mine, now=10.0)
    assert _admit(table, ALICE, hello) == Start(
        replaced=((mine, "replaced by a new session of the same client"),)
    ), "a crashed client gets its port back at once"
    refused = _admit(table, BOB, hello, now=25.0)
    assert refused == Refuse(
        reason="port gps is held by alice, whose connection was lost 15 s ago (kept 45 s more for it to "
        "resume); connect with --takeover to take it over"
    )
    assert _admit(table, BOB, takeover, now=25.0) == Start(replaced=((mine, "taken over by bob"),))
    table.attached(mine, features=("device",))
    assert mine.attached and mine.detached_at is None and mine.features == ("device",)
    table.attached(mine)
    assert mine.features == ("device",), "features stay unless the resuming hello names them"
    assert isinstance(_admit(table, BOB, sess.Hello(port="gps", mode="ro")), Start), "watchers need no lock"


def test_limits_count_what_stays() -> None:
    table = _table(max_per_client=2, max_total=3)
    a1 = table.start(ALICE, sess.Hello(port="p1"))
    table.start(ALICE, sess.Hello(port="p2", mode="ro"))
    assert _admit(table, ALICE, sess.Hello(port="p3")) == Refuse(
        reason="too many sessions of yours on this server (2); end some first"
    )
    takeover = sess.Hello(port="p1", takeover=True)
    assert _admit(table, ALICE, takeover) == Start(
        replaced=((a1, "replaced by a new session of the same client"),)
    ), "a session being replaced does not count"
    table.start(BOB, sess.Hello(port="p4"))
    assert _admit(table, BOB, sess.Hello(port="p5")) == Refuse(
        reason="this server has too many sessions; try again later"
    )
    assert (
        len(table) == 3 and table.get(a1.id) is a1 and table.forget(a1.id) is a1 and table.get(a1.id) is None
    )


def test_timers_detach_timeout_and_access_expiry() -> None:
    table = _table()
    assert table.next_timer() is None and table.handle_timer(1e9) == []
    away = table.start(ALICE, sess.Hello(port="p1"))
    expiring = table.start(BOB, sess.Hello(port="p2"), expires_at=100.0)
    table.detached(away, now=50.0)
    assert table.next_timer() == 100.0
    assert table.handle_timer(99.9) == []
    assert table.handle_timer(100.0) == [Expired(session=expiring, why=Why.ACCESS_EXPIRED)]
    assert _admit(table, BOB, sess.Hello(port="p2", session=expiring.id)) == Refuse(reason="access expired")
    assert table.next_timer() == pytest.approx(110.0)
    assert table.handle_timer(110.0) == [Expired(session=away, why=Why.DETACH_TIMEOUT)]
    assert table.sessions == []
