"""Two sans-IO endpoints of a session, wired through a simulated network, on a simulated clock.

The client is a :class:`~meshserial.proto.client_session.ClientSession` and one
:class:`~meshserial.proto.connection.Connection` at a time; the server is a
:class:`~meshserial.proto.sessions.SessionTable` and its connections. Between them a :class:`Link` per
connection carries bytes in each direction, in whatever pieces the test chooses, and can be cut: the
bytes in flight are then lost, and each end learns of the cut when the test says so (at once, later,
or by its keepalive). Everything the asyncio adapters do in production is done here by hand, in a few
lines each, so that the tests exercise the real decisions: resume from acknowledged offsets, the
replay window and acknowledgements, keepalive, detach timeouts, take-over.

Each end has an application: it writes numbered bytes into the session (:meth:`Client.write`,
:meth:`Server.write`) and records what it receives, so a test can check that every byte arrived once
and in order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from meshserial.keys import Identity, verify_handshake_payload
from meshserial.proto import channel as ch
from meshserial.proto import connection as pc
from meshserial.proto import session as sess
from meshserial.proto.client_session import Attempt, ClientSession, Restarted, Resumed, State
from meshserial.proto.sessions import Refuse, Resume, SessionTable, Start

KEEPALIVE = 9.0
DETACH_TIMEOUT = 60.0
SERVER = Identity.generate()
CLIENT = Identity.generate()


@dataclass(eq=False)
class Link:
    """One TCP connection: two byte queues, and whether it is still up."""

    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    up: bool = True


class Server:
    """A server with one port, ``p``, and its client authorized read-write."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        ids = itertools.count(1)
        self.table = SessionTable(detach_timeout=DETACH_TIMEOUT, new_id=lambda: f"s{next(ids):031d}")
        self.conns: dict[Link, pc.Connection] = {}
        self.received = bytearray()  # what the application got, across sessions
        self.sessions_started = 0
        self._next_byte = 0
        self.written = bytearray()

    def accept_connection(self, link: Link) -> None:
        channel = ch.SecureChannel(
            initiator=False, static_private=SERVER.noise_private, payload=SERVER.handshake_payload({"v": 1})
        )
        self.conns[link] = pc.Connection(
            channel,
            role=pc.Role.SERVER,
            verify=verify_handshake_payload,
            keepalive=KEEPALIVE,
            now=self.clock.now,
        )

    def deliver(self, link: Link, data: bytes) -> None:
        conn = self.conns.get(link)
        if conn is None or conn.closing:
            return
        result = conn.receive(data, self.clock.now)
        if isinstance(result, bytes):
            self.received += result
        else:
            while result:
                self._events(link, conn, result)
                result = conn.more(self.clock.now)
        self._flush(link, conn)

    def _events(self, link: Link, conn: pc.Connection, events: list[pc.Event]) -> None:
        for event in events:
            match event:
                case pc.Data(data=data):
                    self.received += data
                case pc.Request(message=sess.Hello() as hello):
                    self._hello(link, conn, hello)
                case pc.PeerClosed() | pc.PeerSilent() | pc.HandshakeTimedOut():
                    self.lost(link)
                case _:
                    pass

    def _hello(self, link: Link, conn: pc.Connection, hello: sess.Hello) -> None:
        assert conn.peer_id is not None
        decision = self.table.admit(
            conn.peer_id, hello, rights="rw", port_exists=True, label=lambda c: "client", now=self.clock.now
        )
        match decision:
            case Resume(session=session, lost=lost):
                # The client knows its old connection is dead before we do: take the stream from it.
                for other, old in list(self.conns.items()):
                    if old is not conn and old.stream is session.stream:
                        old.release()
                        old.abort()
                        del self.conns[other]
                self.table.attached(session)
                conn.send_control(self.table.accept(session, lost=lost), self.clock.now)
                conn.carry(session.stream, hello.rx, self.clock.now)
            case Start(replaced=replaced):
                for old_session, reason in replaced:
                    self.table.ended(old_session, reason)
                session = self.table.start(conn.peer_id, hello)
                self.sessions_started += 1
                conn.send_control(self.table.accept(session), self.clock.now)
                conn.carry(session.stream, 0, self.clock.now)
            case Refuse(reason=reason):
                conn.close(reason)

    def write(self, n: int) -> None:
        """The device produces ``n`` numbered bytes for the client's session (if there is one)."""
        session = next(iter(self.table.sessions), None)
        if session is None:
            return
        data = bytes((self._next_byte + i) % 251 for i in range(n))
        self._next_byte += n
        self.written += data
        carrier = next((c for c in self.conns.values() if c.stream is session.stream), None)
        if carrier is not None:
            wire = carrier.seal(data, self.clock.now)
            link = next(k for k, v in self.conns.items() if v is carrier)
            if wire is not None and link.up:
                link.to_client += wire
        session.stream.record(data)

    def lost(self, link: Link) -> None:
        conn = self.conns.pop(link, None)
        if conn is None:
            return
        stream = conn.release()
        conn.abort()
        session = next((s for s in self.table.sessions if s.stream is stream), None)
        if session is not None:
            self.table.detached(session, self.clock.now)

    def tick(self) -> None:
        for link, conn in list(self.conns.items()):
            self._events(link, conn, conn.handle_timer(self.clock.now))
            self._flush(link, conn)
        self.table.handle_timer(self.clock.now)

    def next_timer(self) -> float | None:
        times = [t for t in (c.next_timer() for c in self.conns.values()) if t is not None]
        if (t := self.table.next_timer()) is not None:
            times.append(t)
        return min(times, default=None)

    def _flush(self, link: Link, conn: pc.Connection) -> None:
        out = conn.data_to_send()
        if out and link.up:
            link.to_client += out


class Client:
    """``use``: one session, reconnecting through :class:`ClientSession`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.session = ClientSession(sess.Hello(port="p", features=()), jitter=lambda: 1.0)
        self.link: Link | None = None
        self.conn: pc.Connection | None = None
        self.received = bytearray()
        self.written = bytearray()
        self.restarts = 0
        self._next_byte = 0

    def connect(self, link: Link) -> None:
        channel = ch.SecureChannel(
            initiator=True, static_private=CLIENT.noise_private, payload=CLIENT.handshake_payload({"v": 1})
        )
        self.link = link
        self.conn = pc.Connection(
            channel,
            role=pc.Role.CLIENT,
            verify=verify_handshake_payload,
            keepalive=KEEPALIVE,
            now=self.clock.now,
        )
        self.session.attempt_started()
        self.conn.initiate()
        self._flush()

    def deliver(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or conn.closing:
            return
        result = conn.receive(data, self.clock.now)
        if isinstance(result, bytes):
            self.received += result
        else:
            while result:
                self._events(conn, result)
                result = conn.more(self.clock.now)
        self._flush()

    def _events(self, conn: pc.Connection, events: list[pc.Event]) -> None:
        for event in events:
            match event:
                case pc.Identified():
                    self._events(conn, conn.accept_peer(self.clock.now))
                    conn.send_control(self.session.hello(), self.clock.now)
                case pc.Answer(message=sess.Accept() as accept):
                    match self.session.accepted(accept):
                        case Resumed():
                            assert self.session.stream is not None
                            conn.carry(self.session.stream, accept.rx, self.clock.now)
                        case Restarted(first=first):
                            if not first:
                                self.restarts += 1
                            assert self.session.stream is not None
                            conn.carry(self.session.stream, 0, self.clock.now)
                case pc.Answer(message=sess.Deny()):
                    self.session.failed(self.clock.now, final=True)
                case pc.Data(data=data):
                    self.received += data
                case pc.PeerClosed() | pc.PeerSilent():
                    self.lost()
                case _:
                    pass

    def write(self, n: int) -> None:
        """The application writes ``n`` numbered bytes (kept while no connection carries them)."""
        stream = self.session.stream
        if stream is None:
            return
        data = bytes((self._next_byte + i) % 241 for i in range(n))
        self._next_byte += n
        self.written += data
        conn = self.conn
        if conn is not None and conn.stream is stream:
            wire = conn.seal(data, self.clock.now)
            if wire is not None and self.link is not None and self.link.up:
                self.link.to_server += wire
        stream.record(data)

    def lost(self) -> None:
        if self.conn is None:
            return
        self.conn.release()
        self.conn.abort()
        self.conn = None
        self.link = None
        self.session.connection_lost(self.clock.now)

    def tick(self) -> Attempt | None:
        if self.conn is not None:
            self._events(self.conn, self.conn.handle_timer(self.clock.now))
            self._flush()
        return self.session.handle_timer(self.clock.now)

    def next_timer(self) -> float | None:
        times = [t for t in (self.session.next_timer(), self.conn.next_timer() if self.conn else None) if t]
        return min(times, default=None)

    @property
    def carried(self) -> bool:
        return self.conn is not None and self.conn.stream is not None and self.session.state is State.CARRIED

    def _flush(self) -> None:
        if self.conn is not None and self.link is not None and self.link.up:
            self.link.to_server += self.conn.data_to_send()


@dataclass
class Clock:
    now: float = 1000.0


class World:
    """A client, a server and the links between them; the test drives it step by step."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.server = Server(self.clock)
        self.client = Client(self.clock)
        self.links: list[Link] = []

    def dial(self) -> Link:
        link = Link()
        self.links.append(link)
        self.server.accept_connection(link)
        self.client.connect(link)
        return link

    @property
    def link(self) -> Link | None:
        return self.client.link

    def pump(self, link: Link, *, to_server: int | None = None, to_client: int | None = None) -> None:
        """Deliver up to that many bytes each way (all when ``None``) on ``link``."""
        n = len(link.to_server) if to_server is None else min(to_server, len(link.to_server))
        if n:
            data = bytes(link.to_server[:n])
            del link.to_server[:n]
            self.server.deliver(link, data)
        n = len(link.to_client) if to_client is None else min(to_client, len(link.to_client))
        if n:
            data = bytes(link.to_client[:n])
            del link.to_client[:n]
            if link is self.client.link:
                self.client.deliver(data)

    def settle(self, *, chunk: int | None = None, rounds: int = 10_000) -> None:
        """Deliver everything on live links until nothing moves (in ``chunk``-byte pieces)."""
        for _ in range(rounds):
            moved = False
            for link in list(self.links):
                if link.up and (link.to_server or link.to_client):
                    self.pump(link, to_server=chunk, to_client=chunk)
                    moved = True
            if not moved:
                return
        raise AssertionError("the link did not settle")

    def cut(self, link: Link, *, server_notices: bool = True, client_notices: bool = True) -> None:
        """The path dies: what is in flight is lost; each end notices now or later."""
        link.up = False
        link.to_server.clear()
        link.to_client.clear()
        if client_notices and link is self.client.link:
            self.client.lost()
        if server_notices:
            self.server.lost(link)

    def advance(self, seconds: float) -> None:
        """Let time pass, running every timer that falls due, in order."""
        end = self.clock.now + seconds
        for _ in range(100_000):
            times = [t for t in (self.client.next_timer(), self.server.next_timer()) if t is not None]
            due = min(times, default=None)
            if due is None or due > end:
                break
            self.clock.now = max(self.clock.now, due)
            if isinstance(self.client.tick(), Attempt):
                self.dial()
            self.server.tick()
            self.settle()
        self.clock.now = end

    def reconnect(self) -> None:
        """Let the client's reconnect timer run and the new connection come up."""
        self.advance(0.0)
        self.settle()
