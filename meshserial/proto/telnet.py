"""Telnet codec, sans-IO: IAC framing, sub-negotiation and RFC 1143 option negotiation.

Theory of operation
-------------------
:class:`TelnetCodec` turns received bytes into :data:`TelnetEvent` objects and queues the bytes we
must send. It knows nothing about serial ports; the RFC 2217 engines in :mod:`.rfc2217` sit on top.

*Receiving* is a small byte-level state machine (:class:`_Rx`)::

    DATA ──IAC──► IAC ──WILL/WONT/DO/DONT──► VERB ──option──► DATA
      ▲            ├──IAC (escaped 0xFF)───────────────────────►│
      │            ├──SB──► SB_OPTION ──option──► SB_DATA ◄──┐  │
      │            └──other command──► DATA        │ IAC     │  │
      │                                            ▼         │  │
      └────────────────────────SE─────────────── SB_IAC ──IAC/other

The data path never loops over bytes in Python: ``bytes.find(IAC)`` jumps from one 0xFF to the next
and everything in between is sliced out whole. A chunk that contains no IAC, arriving while the
parser is in DATA, is returned as the very same ``bytes`` object. State survives between calls, so
any split of the stream (even inside ``IAC SB … IAC SE``) parses the same.

*Sub-negotiation* payloads are capped (:data:`MAX_SUBNEGOTIATION`); a longer one is a
:class:`~meshserial.errors.ProtocolError`. An ``IAC x`` inside SB other than ``IAC IAC`` / ``IAC SE``
is illegal (RFC 855) but is dropped leniently, both bytes, as gensio does, and reported as
:class:`Anomaly`.

*Option negotiation* follows the Q method of RFC 1143: each side of each option (``LOCAL`` = what we
WILL do, ``REMOTE`` = what we ask the peer to DO) is one of NO / YES / WANTNO / WANTYES plus a
one-deep queue. This is what makes negotiation loop-free: we only answer a request that changes
state, and a WONT/DONT for an option that is already off is never answered. Options outside the
policy sets given to the constructor are refused (``DO x`` → ``WONT x``, ``WILL x`` → ``DONT x``)
without keeping any state for them, so memory stays bounded whatever the peer offers.

Deliberately unsupported: NVT CR/NUL translation (RFC 854 wants a bare CR sent as ``CR NUL`` outside
BINARY mode, but no serial peer does it: ser2net and pyserial pass CR and NUL through untouched and
hub4com never strips a NUL, so translating would corrupt binary data), Telnet "Synch" / TCP urgent data,
GA. One-byte commands are surfaced as :class:`TelnetCommand` and left to the layer above.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import assert_never

from meshserial.errors import ProtocolError

# RFC 854 command bytes.
IAC = 255
DONT = 254
DO = 253
WONT = 252
WILL = 251
SB = 250
GA = 249
EL = 248
EC = 247
AYT = 246
AO = 245
IP = 244
BRK = 243
DM = 242
NOP = 241
SE = 240

# Options used by meshserial.
BINARY = 0  # RFC 856
ECHO = 1  # RFC 857
SGA = 3  # RFC 858
COM_PORT_OPTION = 44  # RFC 2217

MAX_SUBNEGOTIATION = 256
"""Largest SB payload (after the option byte, un-escaped) we accept. RFC 2217 needs at most 5 bytes
except for SIGNATURE text; gensio itself keeps only 31."""

_IAC_BYTE = b"\xff"
_IAC_IAC = b"\xff\xff"


def escape(data: bytes) -> bytes:
    """Double every 0xFF so ``data`` can travel as Telnet data or inside SB (RFC 854, RFC 855).

    Returns ``data`` itself when there is nothing to escape (``bytes.replace`` does not copy then).
    """
    return data.replace(_IAC_BYTE, _IAC_IAC)


# ---- events --------------------------------------------------------------------------------------


class Side(enum.Enum):
    """Which end of an option: ``LOCAL`` is WILL/WONT (we perform it), ``REMOTE`` is DO/DONT."""

    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True, slots=True, kw_only=True)
class TelnetData:
    """Application bytes with Telnet escaping removed."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TelnetCommand:
    """A one-byte Telnet command such as ``IAC BRK`` or ``IAC NOP`` (``code`` is the second byte)."""

    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Subnegotiation:
    """``IAC SB option payload IAC SE`` with the payload un-escaped."""

    option: int
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class OptionChanged:
    """An option side settled: ``enabled`` after agreement, disabled after refusal or withdrawal."""

    option: int
    side: Side
    enabled: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Anomaly:
    """Survivable nonsense from the peer (for logs)."""

    reason: str


TelnetEvent = TelnetData | TelnetCommand | Subnegotiation | OptionChanged | Anomaly


# ---- RFC 1143 Q method -----------------------------------------------------------------------------


class _Q(enum.Enum):
    NO = enum.auto()
    YES = enum.auto()
    WANTNO = enum.auto()
    WANTYES = enum.auto()


@dataclass(slots=True)
class _OptionState:
    q: _Q = _Q.NO
    opposite: bool = False  # RFC 1143 "queue" bit: EMPTY (False) or OPPOSITE (True)


class _Rx(enum.Enum):
    DATA = enum.auto()
    IAC = enum.auto()
    VERB = enum.auto()
    SB_OPTION = enum.auto()
    SB_DATA = enum.auto()
    SB_IAC = enum.auto()


# verb -> (side it concerns, whether it asks for "enabled")
_VERBS: dict[int, tuple[Side, bool]] = {
    WILL: (Side.REMOTE, True),
    WONT: (Side.REMOTE, False),
    DO: (Side.LOCAL, True),
    DONT: (Side.LOCAL, False),
}


_SEND_VERB: dict[tuple[Side, bool], int] = {
    (Side.LOCAL, True): WILL,
    (Side.LOCAL, False): WONT,
    (Side.REMOTE, True): DO,
    (Side.REMOTE, False): DONT,
}


class TelnetCodec:
    """Streaming Telnet parser plus output queue.

    ``local_options`` are the options we agree to perform when the peer sends DO; ``remote_options``
    are the ones we agree to let the peer perform when it sends WILL. Everything else is refused.
    """

    def __init__(
        self,
        *,
        local_options: frozenset[int],
        remote_options: frozenset[int],
        max_subnegotiation: int = MAX_SUBNEGOTIATION,
    ) -> None:
        self._accept = {Side.LOCAL: local_options, Side.REMOTE: remote_options}
        self._options: dict[tuple[Side, int], _OptionState] = {}
        self._max_sb = max_subnegotiation
        self._rx = _Rx.DATA
        self._verb = 0
        self._sb_option = 0
        self._sb = bytearray()
        self._broken = False
        self._out: list[bytes] = []

    # ---- output ----------------------------------------------------------------------------------

    def send_data(self, data: bytes) -> None:
        """Queue application bytes, escaping 0xFF."""
        if data:
            self._out.append(escape(bytes(data)))

    def send_command(self, code: int) -> None:
        """Queue a one-byte command (``IAC code``)."""
        self._out.append(bytes((IAC, code)))

    def send_subnegotiation(self, option: int, payload: bytes) -> None:
        """Queue ``IAC SB option payload IAC SE``, doubling 0xFF inside (RFC 855)."""
        self._out.append(bytes((IAC, SB, option)) + escape(payload) + bytes((IAC, SE)))

    def data_to_send(self) -> bytes:
        """Drain everything queued so far (``b""`` if nothing)."""
        if not self._out:
            return b""
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return out

    # ---- option negotiation ------------------------------------------------------------------------

    def enabled(self, side: Side, option: int) -> bool:
        """True when ``option`` is agreed on ``side``."""
        st = self._options.get((side, option))
        return st is not None and st.q is _Q.YES

    def request(self, side: Side, option: int, enable: bool) -> None:
        """Ask to enable or disable an option side (RFC 1143 §7, "we want … to enable/disable")."""
        st = self._options.setdefault((side, option), _OptionState())
        match st.q:
            case _Q.NO:
                if enable:
                    st.q = _Q.WANTYES
                    self._send_verb(side, option, True)
            case _Q.YES:
                if not enable:
                    st.q = _Q.WANTNO
                    self._send_verb(side, option, False)
            case _Q.WANTNO:
                # A change of mind while a DONT/WONT is in flight is queued, never sent twice.
                st.opposite = enable
            case _Q.WANTYES:
                st.opposite = not enable
            case _:
                assert_never(st.q)

    def _send_verb(self, side: Side, option: int, enable: bool) -> None:
        self._out.append(bytes((IAC, _SEND_VERB[side, enable], option)))

    def _received_verb(self, verb: int, option: int, events: list[TelnetEvent]) -> None:
        """RFC 1143 §7 receive rules; ``side`` is whose behaviour the verb is about."""
        side, positive = _VERBS[verb]
        key = (side, option)
        st = self._options.get(key)
        if st is None:
            if not positive:
                return  # already off: never answer a WONT/DONT we did not need to (RFC 854 loops)
            if option not in self._accept[side]:
                self._send_verb(side, option, False)  # refuse without remembering anything
                return
            st = self._options[key] = _OptionState()
        if positive:
            match st.q:
                case _Q.NO:
                    if option in self._accept[side]:
                        st.q = _Q.YES
                        self._send_verb(side, option, True)
                        events.append(OptionChanged(option=option, side=side, enabled=True))
                    else:
                        self._send_verb(side, option, False)
                case _Q.YES:
                    pass
                case _Q.WANTNO:
                    # "DONT answered by WILL": the peer violated the protocol; accept what it says.
                    events.append(Anomaly(reason=f"option {option} enabled while we were disabling it"))
                    if st.opposite:
                        st.q, st.opposite = _Q.YES, False
                        events.append(OptionChanged(option=option, side=side, enabled=True))
                    else:
                        st.q = _Q.NO
                case _Q.WANTYES:
                    if st.opposite:
                        st.q, st.opposite = _Q.WANTNO, False
                        self._send_verb(side, option, False)
                    else:
                        st.q = _Q.YES
                        events.append(OptionChanged(option=option, side=side, enabled=True))
                case _:
                    assert_never(st.q)
        else:
            match st.q:
                case _Q.NO:
                    pass
                case _Q.YES:
                    st.q = _Q.NO
                    self._send_verb(side, option, False)
                    events.append(OptionChanged(option=option, side=side, enabled=False))
                case _Q.WANTNO:
                    if st.opposite:
                        st.q, st.opposite = _Q.WANTYES, False
                        self._send_verb(side, option, True)
                    else:
                        st.q = _Q.NO
                case _Q.WANTYES:
                    # Our request was refused (with or without a queued change of mind).
                    st.q, st.opposite = _Q.NO, False
                    events.append(OptionChanged(option=option, side=side, enabled=False))
                case _:
                    assert_never(st.q)

    # ---- input -----------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[TelnetEvent]:
        """Parse a chunk of the stream; raises :class:`ProtocolError` on an oversized sub-negotiation."""
        if self._broken:
            raise ProtocolError("telnet stream already failed")
        if not isinstance(data, bytes):
            data = bytes(data)
        if self._rx is _Rx.DATA and IAC not in data:
            # Fast path: the common case costs one C-level scan and no copy.
            return [TelnetData(data=data)] if data else []
        try:
            return self._parse(data)
        except ProtocolError:
            self._broken = True
            raise

    def _parse(self, data: bytes) -> list[TelnetEvent]:
        events: list[TelnetEvent] = []
        pieces: list[bytes] = []  # data slices not yet emitted, joined once per run of data

        def flush() -> None:
            if pieces:
                events.append(TelnetData(data=pieces[0] if len(pieces) == 1 else b"".join(pieces)))
                pieces.clear()

        pos = 0
        end = len(data)
        rx = self._rx
        while pos < end:
            match rx:
                case _Rx.DATA:
                    i = data.find(IAC, pos)
                    if i < 0:
                        pieces.append(data[pos:] if pos else data)
                        pos = end
                    elif i + 1 < end and data[i + 1] == IAC:
                        pieces.append(data[pos : i + 1])  # keep one 0xFF of the escaped pair
                        pos = i + 2
                    else:
                        if i > pos:
                            pieces.append(data[pos:i])
                        pos = i + 1
                        rx = _Rx.IAC
                case _Rx.IAC:
                    code = data[pos]
                    pos += 1
                    rx = _Rx.DATA
                    if code == IAC:
                        pieces.append(_IAC_BYTE)
                    elif code in _VERBS:
                        self._verb = code
                        rx = _Rx.VERB
                    elif code == SB:
                        rx = _Rx.SB_OPTION
                    elif code == SE:
                        flush()
                        events.append(Anomaly(reason="IAC SE outside sub-negotiation"))
                    elif code > SE:
                        flush()
                        events.append(TelnetCommand(code=code))
                    else:
                        flush()
                        events.append(Anomaly(reason=f"IAC followed by non-command byte {code}"))
                case _Rx.VERB:
                    flush()
                    self._received_verb(self._verb, data[pos], events)
                    pos += 1
                    rx = _Rx.DATA
                case _Rx.SB_OPTION:
                    self._sb_option = data[pos]
                    self._sb.clear()
                    pos += 1
                    rx = _Rx.SB_DATA
                case _Rx.SB_DATA:
                    i = data.find(IAC, pos)
                    stop = end if i < 0 else i
                    self._sb_extend(data[pos:stop])
                    pos = stop if i < 0 else i + 1
                    if i >= 0:
                        rx = _Rx.SB_IAC
                case _Rx.SB_IAC:
                    code = data[pos]
                    pos += 1
                    rx = _Rx.SB_DATA
                    if code == IAC:
                        self._sb_extend(_IAC_BYTE)
                    elif code == SE:
                        flush()
                        events.append(Subnegotiation(option=self._sb_option, payload=bytes(self._sb)))
                        self._sb.clear()
                        rx = _Rx.DATA
                    else:
                        # RFC 855 allows only IAC IAC / IAC SE here; gensio drops both bytes, so do we.
                        flush()
                        events.append(Anomaly(reason=f"IAC {code} inside sub-negotiation dropped"))
                case _:
                    assert_never(rx)
        self._rx = rx
        flush()
        return events

    def _sb_extend(self, chunk: bytes) -> None:
        if len(self._sb) + len(chunk) > self._max_sb:
            self._sb.clear()
            raise ProtocolError(f"telnet sub-negotiation longer than {self._max_sb} bytes")
        self._sb += chunk

    @property
    def buffered(self) -> int:
        """Bytes held by the parser between calls (a partial sub-negotiation); bounded."""
        return len(self._sb)
