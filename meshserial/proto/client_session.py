"""The client's side of a session across connections, sans-IO: what to ask, when to try again.

Why: ``use`` keeps its local port open while connections come and go, so the client needs a memory of
the session that is independent of any connection: its id, its stream (the bytes sent and received
so far), and a schedule for reconnecting. :class:`ClientSession` holds that memory and makes the
decisions; the asyncio adapter (:mod:`meshserial.net.resilient`) connects when told and reports what
happened.

Theory of operation
-------------------
States::

    CONNECTING --accepted--> CARRIED --connection lost--> WAITING --timer--> CONNECTING --accepted--> ...
        |                                                    ^                   |
        +--------------------------- failed (transient) ----+-------------------+
    any --final failure or the server ended the session--> ENDED

* :meth:`ClientSession.hello` is the request for the next connection: the first carries no session;
  later ones carry the session id and how much of each direction arrived (``rx``) and was sent
  (``tx``), so that the server can resume the session from there.
* :meth:`ClientSession.accepted` compares the server's ``accept`` with what we asked: the same id is a
  resume (each side sends again what the other lacks: lossless); another id means the server no longer
  had our session (it restarted, or we were away longer than its detach timeout): a *new* session,
  whose stream starts at 0; bytes we had sent that were not acknowledged may be lost, and the caller
  is told how many.
* After a lost connection the first attempt is immediate; after a failed attempt the next waits
  ``backoff`` seconds (times 0.75 to 1.25, so that many clients of one server do not come back in
  step), doubling from :data:`FIRST_BACKOFF` up to ``max_backoff``. An attempt that does not finish in
  :attr:`ClientSession.attempt_timeout` seconds counts as failed (the adapter, which awaits the attempt,
  enforces it): a SYN lost while the path was down would otherwise hold it for the kernel's
  retransmission schedule (1 s, 3 s, …).
* A failure that trying again cannot fix (access revoked, the port taken, a changed key) ends the
  session; so does a session the server ended on purpose.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from meshserial.proto import session as sess
from meshserial.proto.stream import Stream

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 1.0
ATTEMPT_TIMEOUT = 2.0


class State(enum.Enum):
    CONNECTING = "connecting"
    CARRIED = "carried"
    WAITING = "waiting"
    ENDED = "ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed:
    """The server still had the session: nothing lost unless its buffer overflowed (``lost``)."""

    lost: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Restarted:
    """A new session replaced one the server no longer had; up to ``in_flight`` bytes we had sent
    may not have arrived. ``first`` is true for the very first session (nothing was replaced)."""

    in_flight: int
    first: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """Time to connect (again)."""


class ClientSession:
    """See the module docstring. ``jitter()`` returns a factor in [0.75, 1.25] (random in
    production, fixed in tests)."""

    def __init__(
        self,
        hello: sess.Hello,
        *,
        jitter: Callable[[], float],
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self._template = hello
        self._jitter = jitter
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        #: How long one attempt may take before it counts as failed (the adapter enforces it).
        self.attempt_timeout = attempt_timeout
        self.session_id: str | None = None
        self.stream: Stream | None = None
        self.state = State.CONNECTING
        self.lost_at: float | None = None  # when the connection was lost (for "back after N s")
        self.attempts = 0
        self._delay = first_backoff
        self._timer: float | None = None

    # ---- requests and answers -----------------------------------------------------------------------

    def hello(self) -> sess.Hello:
        """The request for the next connection (the first, or a resume)."""
        template, stream = self._template, self.stream
        if stream is None or self.session_id is None:
            return template
        return sess.Hello(
            port=template.port,
            mode=template.mode,
            session=self.session_id,
            rx=stream.received,
            tx=stream.sent,
            features=template.features,
        )

    def accepted(self, accept: sess.Accept) -> Resumed | Restarted:
        """The server accepted: a resume of our session, or a new one (see the module docstring).
        After a :class:`Restarted` the caller starts the new stream (:attr:`stream`)."""
        self.state = State.CARRIED
        self.attempts = 0
        self._delay = self._first_backoff
        self._timer = None
        old = self.stream
        if old is not None and accept.session == self.session_id:
            return Resumed(lost=accept.lost)
        self.session_id = accept.session
        self.stream = Stream()
        return Restarted(in_flight=old.unacknowledged if old is not None else 0, first=old is None)

    # ---- connection life ---------------------------------------------------------------------------

    def attempt_started(self) -> None:
        """A connection attempt begins (it has :attr:`attempt_timeout` seconds)."""
        self.state = State.CONNECTING
        self.attempts += 1
        self._timer = None

    def connection_lost(self, now: float) -> None:
        """The connection carrying the session died without ending it: try again at once."""
        if self.state is State.ENDED:
            return
        self.lost_at = now
        self.state = State.WAITING
        self._timer = now

    def failed(self, now: float, *, final: bool) -> None:
        """An attempt failed: wait, then try again; ``final`` (nothing to retry) ends the session."""
        if final:
            self.end()
            return
        self.state = State.WAITING
        self._timer = now + self._delay * self._jitter()
        self._delay = min(self._delay * 2, self._max_backoff)

    def end(self) -> None:
        self.state = State.ENDED
        self._timer = None

    # ---- timer ------------------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> Attempt | None:
        if self._timer is None or now < self._timer:
            return None
        self._timer = None
        return Attempt()
