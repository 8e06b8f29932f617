"""The ``redeem`` control message: the optional client name, old and new peers."""

from __future__ import annotations

import json

import pytest

from meshserial.errors import ProtocolError
from meshserial.proto import session as sess


def test_name_round_trips() -> None:
    message = sess.Redeem(invite="00" * 8, proof="11" * 32, name="bench-pi")
    assert json.loads(sess.encode(message))["name"] == "bench-pi"
    assert sess.decode(sess.encode(message)) == message


@pytest.mark.parametrize(
    "body",
    [
        {"t": "redeem", "invite": "00", "proof": "11"},  # a client from before names
        {"t": "redeem", "invite": "00", "proof": "11", "name": None},
    ],
)
def test_name_is_optional(body: dict[str, object]) -> None:
    assert sess.decode(json.dumps(body).encode()) == sess.Redeem(invite="00", proof="11", name=None)


@pytest.mark.parametrize("name", [7, True, ["a"], {"n": "a"}])
def test_name_of_the_wrong_type_is_a_protocol_error(name: object) -> None:
    body = {"t": "redeem", "invite": "00", "proof": "11", "name": name}
    with pytest.raises(ProtocolError, match="'name' has the wrong type"):
        sess.decode(json.dumps(body).encode())


def test_unknown_keys_are_still_ignored() -> None:
    """What lets an older server take a newer client's redeem: keys it does not know."""
    body = {"t": "redeem", "invite": "00", "proof": "11", "name": "a", "later": 1}
    assert sess.decode(json.dumps(body).encode()) == sess.Redeem(invite="00", proof="11", name="a")
