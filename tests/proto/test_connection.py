"""The sans-IO connection: handshake and request, session control, keepalive, endings."""

from __future__ import annotations

import pytest

from meshserial.errors import ConnectionLost, ProtocolError
from meshserial.keys import Identity, verify_handshake_payload
from meshserial.proto import channel as ch
from meshserial.proto import connection as pc
from meshserial.proto import session as sess
from meshserial.proto.stream import Stream

SERVER, CLIENT = Identity.generate(), Identity.generate()


def _conn(
    role: pc.Role, *, keepalive: float = 9.0, now: float = 0.0, deadline: float | None = None
) -> pc.Connection:
    me = CLIENT if role is pc.Role.CLIENT else SERVER
    channel = ch.SecureChannel(
        initiator=role is pc.Role.CLIENT,
        static_private=me.noise_private,
        payload=me.handshake_payload({"v": 1}),
    )
    return pc.Connection(
        channel,
        role=role,
        verify=verify_handshake_payload,
        keepalive=keepalive,
        now=now,
        handshake_deadline=deadline,
    )


def _move(src: pc.Connection, dst: pc.Connection, now: float = 0.0) -> list[pc.Event] | bytes:
    data = src.data_to_send()
    return dst.receive(data, now) if data else []


def _pair(hello: sess.Message | None = None) -> tuple[pc.Connection, pc.Connection, list[pc.Event]]:
    """A client and a server through the handshake; the client sends ``hello`` (default: port p)."""
    client, server = _conn(pc.Role.CLIENT), _conn(pc.Role.SERVER)
    client.initiate()
    assert _move(client, server) == []
    events = _move(server, client)
    assert isinstance(events, list) and isinstance(events[0], pc.Identified)
    assert events[0].peer_id == SERVER.public_id
    assert client.accept_peer(0.0) == []
    client.send_control(hello or sess.Hello(port="p"), 0.0)
    got = _move(client, server)
    assert isinstance(got, list)
    return client, server, got


def _send(conn: pc.Connection, data: bytes, now: float = 0.0) -> bytes:
    """What the adapter does for session bytes: seal and send them, and keep them for a resume."""
    assert conn.stream is not None
    wire = conn.seal(data, now)
    conn.stream.record(data)
    return bytes(wire or b"")


def _session(client: pc.Connection, server: pc.Connection) -> tuple[Stream, Stream]:
    cs, ss = Stream(), Stream()
    server.send_control(sess.Accept(port="p", mode="rw", session="x"))
    server.carry(ss, 0, 0.0)
    answer = _move(server, client)
    assert isinstance(answer, list) and isinstance(answer[0], pc.Answer)
    client.carry(cs, 0, 0.0)
    return cs, ss


def test_request_and_answer_then_data_both_ways() -> None:
    client, server, events = _pair()
    assert [type(e) for e in events] == [pc.Identified, pc.Request]
    assert server.peer_id == CLIENT.public_id and server.requested and server.progress == 2
    cs, ss = _session(client, server)
    assert server.receive(_send(client, b"abc", 1.0), 1.0) == b"abc" and ss.received == 3
    # Several records in one read come back as one Data event.
    wire = _send(server, b"1") + _send(server, b"2") + _send(server, b"3")
    assert client.receive(wire, 1.0) == b"123" and cs.received == 3
    # Mixed with other records (a ping here), data comes as a Data event.
    server._channel.send_ping()
    wire = server.data_to_send() + _send(server, b"4")
    assert client.receive(wire, 1.0) == [pc.Data(data=b"4")]
    assert server.receive(client.data_to_send(), 1.0) == [], "the pong is nothing to act on"


def test_a_large_read_is_acknowledged_at_once() -> None:
    client, server, _ = _pair()
    cs, _ = _session(client, server)
    server.release()
    server.carry(Stream(ack_every=4), 0, 0.0)
    assert server.receive(_send(client, b"0123456789"), 0.0) == b"0123456789"
    assert client.receive(server.data_to_send(), 0.0) == [] and cs.unacknowledged == 0


def test_records_behind_an_answer_wait_for_the_adapter() -> None:
    client, server, _ = _pair()
    ss = Stream()
    server.send_control(sess.Accept(port="p", mode="rw", session="x"))
    server.carry(ss, 0, 0.0)
    server._channel.send_data(b"first bytes")  # in the same read as the accept
    events = _move(server, client)
    assert isinstance(events, list) and [type(e) for e in events] == [pc.Answer]
    client.carry(Stream(), 0, 0.0)
    assert client.more(0.0) == [pc.Data(data=b"first bytes")]
    assert client.more(0.0) == []


def test_records_behind_a_refused_request_are_dropped() -> None:
    client, server = _conn(pc.Role.CLIENT), _conn(pc.Role.SERVER)
    client.initiate()
    _move(client, server)
    _move(server, client)
    client.accept_peer(0.0)
    client.send_control(sess.Hello(port="p"), 0.0)
    client._channel.send_data(b"rm -rf /")  # pipelined before any accept
    events = server.receive(client.data_to_send(), 0.0)
    assert isinstance(events, list) and isinstance(events[-1], pc.Request)
    server.close("not authorized")
    assert server.more(0.0) == []


def test_a_request_too_early_or_twice_is_a_protocol_error() -> None:
    client, server, _ = _pair()
    client.send_control(sess.Hello(port="q"), 0.0)
    with pytest.raises(ProtocolError, match="unexpected Hello"):
        _move(client, server)


@pytest.mark.parametrize(
    ("role", "message"),
    [
        (pc.Role.SERVER, sess.Accept(port="p", mode="rw", session="x")),
        (pc.Role.SERVER, sess.GoAway(reason="x")),
        (pc.Role.SERVER, sess.DeviceState(present=True)),
        (pc.Role.CLIENT, sess.Hello(port="p")),
    ],
)
def test_messages_for_the_other_role_are_protocol_errors(role: pc.Role, message: sess.Message) -> None:
    client, server, _ = _pair()
    _cs, _ss = _session(client, server)
    if role is pc.Role.SERVER:
        client.send_control(message, 0.0)
        with pytest.raises(ProtocolError, match="from the client"):
            _move(client, server)
    else:
        server.send_control(message, 0.0)
        with pytest.raises(ProtocolError, match="from the server"):
            _move(server, client)


def test_acks_data_outside_a_session_and_the_window() -> None:
    client, server, _ = _pair()
    client.send_control(sess.Ack(offset=0), 0.0)
    with pytest.raises(ProtocolError, match="ack outside a session"):
        _move(client, server)
    client, server, _ = _pair()
    client._channel.send_data(b"early")
    with pytest.raises(ProtocolError, match="data before the session"):
        _move(client, server)
    client, server, _ = _pair()
    _cs, ss = _session(client, server)
    ss.replay.limit = 4
    ss.record(b"0123456789")
    assert ss.window_full
    client.send_control(sess.Ack(offset=10), 0.0)
    assert _move(client, server) == [pc.WindowOpened()]
    client.send_control(sess.Ack(offset=10), 0.0)
    assert _move(client, server) == [], "only the ack that opens the window says so"


def test_device_state_goaway_and_deny_during_a_session() -> None:
    client, server, _ = _pair()
    _session(client, server)
    server.send_control(sess.DeviceState(present=False), 0.0)
    assert _move(server, client) == [pc.DeviceChanged(present=False)]
    server.go_away("restarting")
    assert _move(server, client) == [pc.PeerClosed()]
    assert client.going_away == "restarting" and client.ending() is pc.Ending.GONE_AWAY
    server.go_away("again")  # closing already: nothing more
    assert server.data_to_send() == b""

    client, server, _ = _pair()
    _session(client, server)
    server.close("access revoked")
    assert _move(server, client) == [pc.PeerClosed()]
    assert client.end_reason == "access revoked" and client.ending() is pc.Ending.ENDED
    client.eof()  # after its CLOSE, the end of TCP is clean
    assert server.ending() is pc.Ending.LOST
    assert _move(client, server) == [pc.PeerClosed()]  # our CLOSE answered theirs
    assert server.ending() is pc.Ending.ENDED


def test_an_end_without_close_is_a_loss() -> None:
    _client, server, _ = _pair()
    with pytest.raises(ConnectionLost):
        server.eof()


def test_sealing_on_a_closing_or_closed_connection_sends_nothing() -> None:
    client, server, _ = _pair()
    _session(client, server)
    client.close()
    assert client.seal(b"x", 0.0) is None
    client.close("twice")  # no-op
    _move(client, server)  # the server answers the CLOSE; its channel is closed now
    server.closing = False  # as if the adapter had not noticed yet
    assert server.seal(b"late", 0.0) is None


def test_telnet_first_bytes_are_recognised_on_either_side() -> None:
    server = _conn(pc.Role.SERVER)
    assert server.receive(b"\xff\xfb\x2c", 0.0) == [pc.TelnetSpoken()]
    client = _conn(pc.Role.CLIENT)
    client.initiate()
    assert client.receive(b"\xff\xfd\x03", 0.0) == [pc.TelnetSpoken()]
    # Only the very first bytes count: later, 0xFF is just part of a length.
    server = _conn(pc.Role.SERVER)
    server.receive(b"\x00", 0.0)
    with pytest.raises(ProtocolError):
        server.receive(b"\xff" * 40, 0.0)


def test_a_client_that_never_initiated_fails_on_any_byte() -> None:
    client = _conn(pc.Role.CLIENT)
    with pytest.raises(ProtocolError):
        client.receive(b"\xff", 0.0)


def test_closing_during_the_handshake_and_after_a_failure() -> None:
    server = _conn(pc.Role.SERVER)
    server.close("nothing to say yet")  # not established: nothing can be sent
    assert server.data_to_send() == b"" and server.closing
    server = _conn(pc.Role.SERVER)
    server.go_away("stopping")
    assert server.data_to_send() == b""
    _client, server, _ = _pair()
    with pytest.raises(ProtocolError):
        server.receive(b"\x00\x05junk!", 0.0)  # the channel fails for good
    server.go_away("after the failure")  # its channel refuses: ignored
    assert server.closing
    _client, server, _ = _pair()
    with pytest.raises(ProtocolError):
        server.receive(b"\x00\x05junk!", 0.0)
    server.close("after the failure")
    assert server.closing


def test_no_ack_and_no_keepalive_where_none_belongs() -> None:
    client, server, _ = _pair()
    server.release()
    assert server.release() is None
    quiet = _conn(pc.Role.SERVER, keepalive=0.0)
    quiet.carry(Stream(), 0, 0.0)
    assert quiet.next_timer() is None, "keepalive 0: no keepalive"
    _cs, _ss = _session(client, server)
    server.abort()
    server._send_ack(1)  # closing: no ack goes out
    assert server.data_to_send() == b""


def test_a_busy_connection_needs_no_ping() -> None:
    client, server, _ = _pair()
    _session(client, server)
    client.release()
    client.carry(Stream(ack_delay=100.0), 0, 100.0)
    _send(client, b"x", 102.5)  # sent recently…
    server.stream = None
    client.receive(server._channel.seal_data(b"y"), 102.5)  # …and heard recently
    assert client.handle_timer(103.0) == [] and client.data_to_send() == b""


def test_the_handshake_deadline() -> None:
    server = _conn(pc.Role.SERVER, deadline=10.0)
    assert server.progress == 0 and server.next_timer() == 10.0
    assert server.handle_timer(9.9) == []
    assert server.handle_timer(10.0) == [pc.HandshakeTimedOut()]
    assert server.next_timer() is None
    server.set_handshake_deadline(20.0)
    _client, other, _ = _pair()
    assert other.next_timer() is None, "the request clears the deadline"


def test_keepalive_pings_and_declares_silence_exactly() -> None:
    client, server, _ = _pair()
    _session(client, server)
    client.release()
    cs = Stream()
    assert client.next_timer() is None
    client.carry(cs, 0, 100.0)
    assert client.next_timer() == pytest.approx(103.0)
    server.stream = None  # the server's side is not under test here: just bytes heard
    client.receive(server._channel.seal_data(b"x"), 100.0)  # heard at 100
    assert client.handle_timer(103.0) == []
    ping = client.data_to_send()
    assert ping, "a third of the keepalive without traffic: ping"
    assert client.next_timer() == pytest.approx(106.0)
    assert client.handle_timer(106.0) == []
    assert client.next_timer() == pytest.approx(109.0)
    assert client.handle_timer(108.0) == [], "not due yet"
    assert client.handle_timer(109.0) == [pc.PeerSilent(silence=9.0)]
    assert client.next_timer() is None or client.next_timer() == cs.ack_at


def test_timers_stop_when_closing_and_acks_go_out_when_due() -> None:
    client, server, _ = _pair()
    cs, _ss = _session(client, server)
    server.receive(_send(client, b"abc", 1.0), 1.0)
    assert server.next_timer() == pytest.approx(1.05)
    assert server.handle_timer(1.05) == []
    assert cs.unacknowledged == 3
    assert client.receive(server.data_to_send(), 1.05) == []
    assert cs.unacknowledged == 0
    server.abort()
    assert server.handle_timer(100.0) == [] and server.next_timer() is None


def test_carry_resends_what_the_peer_lacks() -> None:
    client, server, _ = _pair()
    _cs, ss = _session(client, server)
    ss.record(b"0123456789")
    server.release()
    assert server.carry(ss, 4, 2.0) == 0
    assert client.receive(server.data_to_send(), 2.0) == b"456789"
