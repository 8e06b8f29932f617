"""The server's sessions, sans-IO: who may start, resume or replace a session, and when one expires.

Why: a session outlives its connections, so the server keeps a table of sessions (attached to a
connection, or waiting for their client to come back) and answers every ``hello`` against it. The
decisions are policy, not I/O, and live here; the asyncio server (:mod:`meshserial.server`) supplies
the facts (the client's rights, whether the port exists and is online) and does what is decided
(attach to the port, send the answer, end sessions).

A ``hello`` is answered in this order:

1. no rights on the port → refused with the same words whether the port exists or not (an unknown
   key learns nothing about the ports); ``rw`` asked with ``ro`` rights → refused, saying so; no such
   port → refused;
2. it names a session this client has on this port in this mode → **resume** it (the stream goes on
   from the offsets in the hello);
3. it names a session that ended recently → refused with the reason it ended (a client that was cut
   off without hearing it learns it now);
4. read-write: the writer lock. The port's read-write session of the *same client* is replaced at once
   if its connection was lost (the client crashed or was killed: it must not be locked out of its own
   port for the detach timeout), or with ``takeover`` if it is still connected; another client's
   session only with ``takeover`` and only if its connection was lost, never while it is live;
5. the limits: :attr:`SessionTable.max_per_client` sessions per client, :attr:`SessionTable.max_total`
   in all (sessions being replaced do not count);
6. otherwise a new session **starts**.

Timers (:meth:`SessionTable.next_timer`): a session whose connection was lost is kept for
``detach_timeout`` seconds, then forgotten; a session whose client's access expires at a known time
ends then, with the reason ``access expired``. All times are in one monotonic clock, ``now``.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from meshserial.proto import session as sess
from meshserial.proto.stream import Stream

MAX_PER_CLIENT = 16
MAX_TOTAL = 128
MAX_ENDED = 1024


@dataclass(eq=False, slots=True, kw_only=True)
class Session:
    """One session the server keeps."""

    id: str
    client: bytes
    port: str
    mode: str  # "rw" or "ro"
    stream: Stream = field(default_factory=Stream)
    features: tuple[str, ...] = ()
    attached: bool = True
    detached_at: float | None = None  # when its connection was lost
    expires_at: float | None = None  # when its client's access ends (same clock as ``now``)


# ---- decisions -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Carry ``session`` on the new connection; ``accept`` (without the port's state) answers."""

    session: Session
    lost: int  # bytes the client can no longer get (0 unless the replay buffer overflowed)


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """Start a new session, after ending ``replaced`` (each with the reason its client is told)."""

    replaced: tuple[tuple[Session, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Refuse:
    reason: str


Decision = Resume | Start | Refuse


class Why(enum.Enum):
    DETACH_TIMEOUT = "detach-timeout"  # its client did not come back in time: forgotten
    ACCESS_EXPIRED = "access-expired"  # its client's access ended: ended with that reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Expired:
    session: Session
    why: Why


class SessionTable:
    """See the module docstring. ``new_id`` makes session ids (random in production)."""

    def __init__(
        self,
        *,
        detach_timeout: float,
        new_id: Callable[[], str],
        max_per_client: int = MAX_PER_CLIENT,
        max_total: int = MAX_TOTAL,
        max_ended: int = MAX_ENDED,
    ) -> None:
        self.detach_timeout = detach_timeout
        self.max_per_client = max_per_client
        self.max_total = max_total
        self._max_ended = max_ended
        self._new_id = new_id
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    # ---- hello ----------------------------------------------------------------------------------------

    def admit(
        self,
        client: bytes,
        hello: sess.Hello,
        *,
        rights: str | None,
        port_exists: bool,
        label: Callable[[bytes], str],
        now: float,
    ) -> Decision:
        """Decide on ``hello`` from ``client`` (see the module docstring for the rules)."""
        if rights is None:
            return Refuse(reason=f"not authorized for port {hello.port!r}")
        if hello.mode == "rw" and rights != "rw":
            return Refuse(reason=f"read-only access to {hello.port}: connect with --read-only")
        if not port_exists:
            return Refuse(reason=f"no port named {hello.port!r} here")
        if hello.session is not None:
            live = self._sessions.get(hello.session)
            if (
                live is not None
                and live.client == client
                and live.port == hello.port
                and live.mode == hello.mode
            ):
                return Resume(session=live, lost=max(0, live.stream.replay.start - hello.rx))
            ended = self._ended.get(hello.session)
            if ended is not None and ended[0] == client:
                return Refuse(reason=ended[1])
        replaced: tuple[tuple[Session, str], ...] = ()
        if hello.mode == "rw":
            room = self._make_room(client, hello, label, now)
            if isinstance(room, Refuse):
                return room
            replaced = room
        going = {s.id for s, _ in replaced}
        mine = sum(1 for s in self._sessions.values() if s.client == client and s.id not in going)
        if mine >= self.max_per_client:
            return Refuse(reason=f"too many sessions of yours on this server ({mine}); end some first")
        if len(self._sessions) - len(going) >= self.max_total:
            return Refuse(reason="this server has too many sessions; try again later")
        return Start(replaced=replaced)

    def _make_room(
        self, client: bytes, hello: sess.Hello, label: Callable[[bytes], str], now: float
    ) -> tuple[tuple[Session, str], ...] | Refuse:
        holder = next((s for s in self._sessions.values() if s.port == hello.port and s.mode == "rw"), None)
        if holder is None:
            return ()
        detached = not holder.attached
        if holder.client == client:
            if detached or hello.takeover:
                return ((holder, "replaced by a new session of the same client"),)
            return Refuse(
                reason=f"port {hello.port} is in use by another session of yours; "
                "stop it, or connect with --takeover to replace it"
            )
        if not detached:
            return ()  # another client's live session: the port itself refuses, naming the holder
        if hello.takeover:
            return ((holder, f"taken over by {label(client)}"),)
        assert holder.detached_at is not None
        away = now - holder.detached_at
        left = max(0.0, self.detach_timeout - away)
        return Refuse(
            reason=f"port {hello.port} is held by {label(holder.client)}, whose connection was lost "
            f"{away:.0f} s ago (kept {left:.0f} s more for it to resume); connect with --takeover to "
            "take it over"
        )

    def start(self, client: bytes, hello: sess.Hello, *, expires_at: float | None = None) -> Session:
        """Enter the new session the last :meth:`admit` allowed (once the port has taken it)."""
        session = Session(
            id=self._new_id(),
            client=client,
            port=hello.port,
            mode=hello.mode,
            features=hello.features,
            expires_at=expires_at,
        )
        self._sessions[session.id] = session
        return session

    @staticmethod
    def accept(
        session: Session, *, lost: int = 0, holder: str | None = None, device: bool = True
    ) -> sess.Accept:
        """The ``accept`` for a started or resumed session, with the port's state: who holds it (told
        to a watcher) and whether its device is there."""
        stream = session.stream
        return sess.Accept(
            port=session.port,
            mode=session.mode,
            session=session.id,
            rx=stream.received,
            tx=stream.sent,
            lost=lost,
            holder=holder,
            device=device,
        )

    # ---- life cycle -------------------------------------------------------------------------------

    def attached(self, session: Session, features: tuple[str, ...] | None = None) -> None:
        session.attached = True
        session.detached_at = None
        if features is not None:
            session.features = features

    def detached(self, session: Session, now: float) -> None:
        session.attached = False
        session.detached_at = now

    def ended(self, session: Session, reason: str) -> None:
        """``session`` ends for good, for ``reason``: remembered for a client that comes back."""
        self._ended[session.id] = (session.client, reason)
        while len(self._ended) > self._max_ended:
            self._ended.popitem(last=False)
        self._sessions.pop(session.id, None)

    def forget(self, session_id: str) -> Session | None:
        """Drop a session without a reason to remember (it ended normally)."""
        return self._sessions.pop(session_id, None)

    # ---- timers -----------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        times: list[float] = []
        for session in self._sessions.values():
            if session.detached_at is not None:
                times.append(session.detached_at + self.detach_timeout)
            if session.expires_at is not None:
                times.append(session.expires_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Expired]:
        """Sessions whose time is up; they are already out of the table (access expiries with their
        reason remembered)."""
        out: list[Expired] = []
        for session in list(self._sessions.values()):
            if session.expires_at is not None and now >= session.expires_at:
                self.ended(session, "access expired")
                out.append(Expired(session=session, why=Why.ACCESS_EXPIRED))
            elif session.detached_at is not None and now >= session.detached_at + self.detach_timeout:
                self.forget(session.id)
                out.append(Expired(session=session, why=Why.DETACH_TIMEOUT))
        return out
