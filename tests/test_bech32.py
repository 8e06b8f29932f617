"""Bech32m codec: the BIP-350 published vectors, our deliberate deviations, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserial.proto.bech32 import CHARSET, bech32m_decode, bech32m_encode, convert_bits, decode, encode

# BIP-350 "Test vectors for Bech32m", valid strings.
VALID = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11" + "l" * 83 + "udsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]

# BIP-350 invalid strings, with the reason the BIP gives (and a fragment of our message).
INVALID = [
    ("\x201xj0phk", "HRP character out of range", "printable ASCII"),
    ("\x7f1g6xzxy", "HRP character out of range", "printable ASCII"),
    ("\x801vctc34", "HRP character out of range", "printable ASCII"),
    (
        "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
        "overall max length exceeded (here: HRP longer than 83)",
        "1 to 83 characters",
    ),
    ("qyrz8wqd2c9m", "No separator character", "separator '1' is missing"),
    ("1qyrz8wqd2c9m", "Empty HRP", "prefix before the separator"),
    ("y1b0jsk6g", "Invalid data character", "not a valid character"),
    ("lt1igcx5c0", "Invalid data character", "not a valid character"),
    ("in1muywd", "Too short checksum", "too short"),
    ("mm1crxm3i", "Invalid character in checksum", "not a valid character"),
    ("au1s5cgom", "Invalid character in checksum", "not a valid character"),
    ("M1VUXWEZ", "checksum calculated with uppercase form of HRP", "checksum mismatch"),
    ("16plkw9", "Empty HRP", "prefix before the separator"),
    ("1p2gdwpf", "Empty HRP", "prefix before the separator"),
]

# BIP-173 (original Bech32) valid strings: the other checksum constant, so not Bech32m.
BECH32_ONLY = [
    "A12UEL5L",
    "a12uel5l",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]


def test_vector_lengths() -> None:
    assert len(VALID[4]) == 90


@pytest.mark.parametrize("text", VALID)
def test_bip350_valid(text: str) -> None:
    hrp, values = bech32m_decode(text)
    assert hrp == text[: text.rfind("1")].lower()
    assert bech32m_encode(hrp, values) == text.lower()


def test_bip350_known_data() -> None:
    assert (
        bech32m_encode("abcdef", list(range(31, -1, -1))) == "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx"
    )
    assert bech32m_decode("11" + "l" * 83 + "udsr8") == ("1", [31] * 82)
    assert bech32m_decode("A1LQFN3A") == ("a", [])


@pytest.mark.parametrize(("text", "reason", "message"), INVALID)
def test_bip350_invalid(text: str, reason: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bech32m_decode(text)


@pytest.mark.parametrize("text", BECH32_ONLY)
def test_original_bech32_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="BIP-173"):
        bech32m_decode(text)


@pytest.mark.parametrize("text", ["A1lqfn3a", "a1LQFN3A", "Abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx"])
def test_mixed_case_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="mixes upper and lower case"):
        bech32m_decode(text)


def test_no_90_character_limit() -> None:
    data = bytes(range(200))
    text = encode("msinv", data)
    assert len(text) > 300
    assert decode(text) == ("msinv", data)
    assert decode(text.upper()) == ("msinv", data)


def test_max_length_bounds_hostile_input() -> None:
    text = encode("x", bytes(100))
    with pytest.raises(ValueError, match="at most 50"):
        decode(text, max_length=50)
    with pytest.raises(ValueError, match="at most 1023"):
        decode("a1" + "q" * 2000)


def test_encode_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        encode("MS", b"\x00")
    with pytest.raises(ValueError, match="1 to 83"):
        encode("", b"\x00")
    with pytest.raises(ValueError, match="1 to 83"):
        encode("a" * 84, b"\x00")
    with pytest.raises(ValueError, match="printable"):
        encode("a b", b"\x00")
    with pytest.raises(ValueError, match="5-bit"):
        bech32m_encode("a", [32])


def test_convert_bits_padding_rules() -> None:
    assert convert_bits(b"\xff", 8, 5, pad=True) == [31, 28]
    assert bytes(convert_bits([31, 28], 5, 8, pad=False)) == b"\xff"
    with pytest.raises(ValueError, match="padding"):
        convert_bits([31, 29], 5, 8, pad=False)  # non-zero padding bit
    with pytest.raises(ValueError, match="padding"):
        convert_bits([31, 28, 0], 5, 8, pad=False)  # a whole spare group
    with pytest.raises(ValueError, match="does not fit"):
        convert_bits([256], 8, 5, pad=True)


def test_non_canonical_padding_is_rejected_on_decode() -> None:
    # "ms" + [31, 29]: a valid checksum over data whose padding bit is set.
    text = bech32m_encode("ms", [31, 29])
    with pytest.raises(ValueError, match="padding"):
        decode(text)


hrps = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126).filter(lambda c: not c.isupper()),
    min_size=1,
    max_size=20,
)


@given(hrp=hrps, data=st.binary(max_size=600))
def test_round_trip(hrp: str, data: bytes) -> None:
    text = encode(hrp, data)
    assert decode(text) == (hrp, data)
    assert decode(text.upper()) == (hrp, data)


@given(data=st.binary(min_size=1, max_size=60), where=st.integers(min_value=0), delta=st.integers(1, 31))
def test_any_single_substitution_is_detected(data: bytes, where: int, delta: int) -> None:
    text = encode("ms", data)
    pos = 3 + where % (len(text) - 3)  # somewhere after "ms1"
    wrong = CHARSET[(CHARSET.index(text[pos]) + delta) % 32]
    with pytest.raises(ValueError):
        decode(text[:pos] + wrong + text[pos + 1 :])


@given(text=st.text(max_size=200))
def test_arbitrary_text_decodes_or_raises_value_error(text: str) -> None:
    try:
        hrp, data = decode(text)
    except ValueError:
        return
    assert encode(hrp, data) == text.lower()
