"""RFC 1143 §7, the Q method, as two tables: every state (with its queue bit) against every request of
ours and every verb of the peer's, for both sides of an option."""

from __future__ import annotations

import pytest

from meshserial.proto.telnet import (
    DO,
    DONT,
    IAC,
    SGA,
    WILL,
    WONT,
    Anomaly,
    OptionChanged,
    Side,
    TelnetCodec,
)

REFUSED = 24  # an option outside the policy

# (side, enable) -> the verb that says it, sent or received
VERB = {
    (Side.LOCAL, True): WILL,
    (Side.LOCAL, False): WONT,
    (Side.REMOTE, True): DO,
    (Side.REMOTE, False): DONT,
}
PEER_VERB = {
    (Side.LOCAL, True): DO,
    (Side.LOCAL, False): DONT,
    (Side.REMOTE, True): WILL,
    (Side.REMOTE, False): WONT,
}
STATES = ["NO", "YES", "WANTNO", "WANTNO+OPPOSITE", "WANTYES", "WANTYES+OPPOSITE"]


def codec_in(state: str, side: Side, option: int = SGA) -> TelnetCodec:
    """A codec whose ``side`` of ``option`` is in ``state``, reached through the public API only, with
    its output drained. NO is reached by a refused request, so the option has state."""
    codec = TelnetCodec(local_options=frozenset({SGA}), remote_options=frozenset({SGA}))
    codec.request(side, option, True)
    q, _, opposite = state.partition("+")
    if q == "NO":
        assert codec.receive_data(bytes((IAC, PEER_VERB[side, False], option))) != []
    elif q in ("YES", "WANTNO"):
        codec.receive_data(bytes((IAC, PEER_VERB[side, True], option)))
        if q == "WANTNO":
            codec.request(side, option, False)
            if opposite:
                codec.request(side, option, True)
    elif opposite:
        codec.request(side, option, False)
    codec.data_to_send()
    assert state_of(codec, side, option) == state
    return codec


def state_of(codec: TelnetCodec, side: Side, option: int) -> str:
    st = codec._options[side, option]
    return st.q.name + ("+OPPOSITE" if st.opposite else "")


SIDES = pytest.mark.parametrize("side", list(Side), ids=lambda s: s.value)

# state, what the peer says (enable?), new state, what we answer (enable? or None), events
RECEIVE = [
    ("NO", True, "YES", True, [True]),
    ("YES", True, "YES", None, []),
    ("WANTNO", True, "NO", None, ["anomaly"]),  # "DONT answered by WILL"
    ("WANTNO+OPPOSITE", True, "YES", None, ["anomaly", True]),
    ("WANTYES", True, "YES", None, [True]),
    ("WANTYES+OPPOSITE", True, "WANTNO", False, []),
    ("NO", False, "NO", None, []),
    ("YES", False, "NO", False, [False]),
    ("WANTNO", False, "NO", None, []),
    ("WANTNO+OPPOSITE", False, "WANTYES", True, []),
    ("WANTYES", False, "NO", None, [False]),
    ("WANTYES+OPPOSITE", False, "NO", None, [False]),
]


@SIDES
@pytest.mark.parametrize("row", RECEIVE, ids=[f"{s}-{'on' if e else 'off'}" for s, e, *_ in RECEIVE])
def test_receive(side: Side, row: tuple[str, bool, str, bool | None, list[object]]) -> None:
    state, peer_enables, after, answer, events = row
    codec = codec_in(state, side)
    got = codec.receive_data(bytes((IAC, PEER_VERB[side, peer_enables], SGA)))
    assert [e.enabled if isinstance(e, OptionChanged) else "anomaly" for e in got] == events
    assert all(e.option == SGA and e.side is side for e in got if isinstance(e, OptionChanged))
    assert all(isinstance(e, OptionChanged | Anomaly) for e in got)
    assert state_of(codec, side, SGA) == after
    assert codec.enabled(side, SGA) is (after == "YES")
    assert codec.data_to_send() == (b"" if answer is None else bytes((IAC, VERB[side, answer], SGA)))


@SIDES
def test_an_option_outside_the_policy_is_refused_even_with_state(side: Side) -> None:
    """We asked for it ourselves and were refused; when the peer then offers it, it is refused."""
    codec = codec_in("NO", side, REFUSED)
    assert codec.receive_data(bytes((IAC, PEER_VERB[side, True], REFUSED))) == []
    assert codec.data_to_send() == bytes((IAC, VERB[side, False], REFUSED))
    assert state_of(codec, side, REFUSED) == "NO"


# state, what we want (enable?), new state, what we send (enable? or None)
REQUEST = [
    ("NO", True, "WANTYES", True),
    ("NO", False, "NO", None),  # already disabled
    ("YES", True, "YES", None),  # already enabled
    ("YES", False, "WANTNO", False),
    ("WANTNO", True, "WANTNO+OPPOSITE", None),  # queued, never sent twice
    ("WANTNO", False, "WANTNO", None),
    ("WANTNO+OPPOSITE", True, "WANTNO+OPPOSITE", None),
    ("WANTNO+OPPOSITE", False, "WANTNO", None),
    ("WANTYES", True, "WANTYES", None),
    ("WANTYES", False, "WANTYES+OPPOSITE", None),
    ("WANTYES+OPPOSITE", True, "WANTYES", None),
    ("WANTYES+OPPOSITE", False, "WANTYES+OPPOSITE", None),
]


@SIDES
@pytest.mark.parametrize(
    ("state", "enable", "after", "sent"),
    REQUEST,
    ids=[f"{s}-{'on' if e else 'off'}" for s, e, *_ in REQUEST],
)
def test_request(side: Side, state: str, enable: bool, after: str, sent: bool | None) -> None:
    codec = codec_in(state, side)
    codec.request(side, SGA, enable)
    assert state_of(codec, side, SGA) == after
    assert codec.data_to_send() == (b"" if sent is None else bytes((IAC, VERB[side, sent], SGA)))
