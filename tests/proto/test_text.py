"""Text across a trust boundary: the port-name rule, and escaping of anything a peer chose."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserial.errors import UsageError
from meshserial.proto.text import PORT_NAME_MAX, PORT_NAME_RULE, check_port_name, escape, valid_port_name

VALID_NAMES = ["gps", "G", "0", "bench-1.uart_0+x", "a" * PORT_NAME_MAX, "9lives"]
INVALID_NAMES = [
    "",
    "a" * (PORT_NAME_MAX + 1),
    ".hidden",
    "-x",
    "_x",
    "+x",
    "gps@host",
    "bench/uart0",
    "host:7000",
    "two words",
    "tab\there",
    "new\nline",
    "Gerät",
    "\uff47\uff50\uff53",  # fullwidth "gps": not A-Z
    "٣",  # an Arabic-Indic digit: not 0-9
    "gps\n",  # fullmatch, not match: a trailing newline is not allowed either
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_port_names(name: str) -> None:
    assert valid_port_name(name)
    assert check_port_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_port_names(name: str) -> None:
    assert not valid_port_name(name)
    with pytest.raises(UsageError) as info:
        check_port_name(name)
    message = str(info.value)
    assert PORT_NAME_RULE in message
    assert f"'{escape(name, PORT_NAME_MAX)}'" in message
    assert "\n" not in message and "\t" not in message, "the name is shown escaped"


ESCAPES = [
    ("plain ASCII, spaces and ~", "plain ASCII, spaces and ~"),
    ("clear\x1b[2Jscreen", "clear\\x1b[2Jscreen"),
    ("nul\x00 bel\x07 del\x7f", "nul\\x00 bel\\x07 del\\x7f"),
    ("line\r\nforged", "line\\x0d\\x0aforged"),
    ("c1 \x85 \x9b \x9f", "c1 \\x85 \\x9b \\x9f"),
    ("nbsp\xa0é", "nbsp\xa0é"),  # printable Latin-1 stays
    ("日本語 😀", "日本語 😀"),
    ("rtl \u202egnp.exe", "rtl \\u202egnp.exe"),  # Cf: bidirectional override
    ("zero\u200dwidth\u200b", "zero\\u200dwidth\\u200b"),
    ("sep\u2028par\u2029", "sep\\u2028par\\u2029"),  # Zl, Zp
    ("tag \U000e0001", "tag \\U000e0001"),  # Cf outside the BMP
    ("private \ue000", "private \\ue000"),  # Co
    ("unassigned \u0378", "unassigned \\u0378"),  # Cn
    ("surrogate \ud800", "surrogate \\ud800"),  # Cs (only from a lax decoder)
]


@pytest.mark.parametrize(("text", "expected"), ESCAPES, ids=[t for t, _ in ESCAPES])
def test_escape(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_escape_of_safe_ascii_is_the_same_object() -> None:
    text = "nothing to do here " * 10
    assert escape(text) is text


def test_escape_limit_cuts_the_input_before_escaping() -> None:
    assert escape("abcdef", 6) == "abcdef"
    assert escape("abcdefg", 6) == "abcdef…"
    assert escape("\x1b" * 10, 2) == "\\x1b\\x1b…", "the limit counts input characters"
    assert escape("", 0) == ""


def _safe(c: str) -> bool:
    if " " <= c <= "~":
        return True
    return ord(c) > 0x9F and unicodedata.category(c) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@given(st.text(st.characters(codec=None, exclude_categories=()), max_size=50))
def test_escaped_text_is_safe_and_escaping_is_idempotent(text: str) -> None:
    escaped = escape(text)
    assert all(_safe(c) for c in escaped)
    assert escape(escaped) == escaped
    if all(_safe(c) for c in text):
        assert escaped == text
