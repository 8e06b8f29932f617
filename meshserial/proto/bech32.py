"""Bech32m (BIP-350) text encoding for identities, secret keys and invite codes.

A Bech32m string is ``hrp`` ‖ ``"1"`` ‖ data characters ‖ a 6-character BCH checksum over the
human-readable part and the data. meshserial uses it because it catches typos (any single wrong
character, and any burst of up to four within the first 89 characters), survives copy-paste and
double-click selection, and reads as ``ms1…`` / ``msinv1…`` / ``MS-SECRET-KEY-1…``.

Deliberate differences from BIP-173/350:

* No 90-character limit: invite codes are longer. Instead, ``decode`` refuses strings longer than
  ``max_length`` (default 1023, the length of the checksum code's natural block) so hostile input
  stays bounded. Past 89 characters the "up to four errors" guarantee no longer holds, but a random
  corruption still slips through only with probability about 1 in 10⁹.
* Only the Bech32m constant is accepted. Original Bech32 strings (BIP-173) are rejected, which also
  avoids Bech32's weakness to inserted or deleted ``q`` characters before a final ``p``.

Pure functions, no I/O. Every malformed input raises ``ValueError`` with a message a user can act on;
callers in ``meshserial.keys`` translate it into the project's error classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "CHARSET",
    "DEFAULT_MAX_LENGTH",
    "bech32m_decode",
    "bech32m_encode",
    "convert_bits",
    "decode",
    "encode",
]

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(CHARSET)}
_BECH32M_CONST = 0x2BC830A3
_BECH32_CONST = 1  # the BIP-173 constant, recognised only to give a better error message
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_LEN = 6
# BIP-173 allows 1..83 HRP characters; we keep that even though the overall 90 limit is gone.
_MAX_HRP_LEN = 83
DEFAULT_MAX_LENGTH = 1023


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _check_hrp(hrp: str) -> None:
    if not 1 <= len(hrp) <= _MAX_HRP_LEN:
        raise ValueError(f"the prefix must be 1 to {_MAX_HRP_LEN} characters long, not {len(hrp)}")
    for c in hrp:
        if not 33 <= ord(c) <= 126:
            raise ValueError(f"the prefix contains a character outside printable ASCII: {c!r}")


def bech32m_encode(hrp: str, values: Sequence[int]) -> str:
    """Encode 5-bit ``values`` under ``hrp`` (lowercase) and return the lowercase Bech32m string."""
    _check_hrp(hrp)
    if hrp != hrp.lower():
        raise ValueError("the prefix must be lowercase; upper-case the whole result instead")
    if any(not 0 <= v < 32 for v in values):
        raise ValueError("data values must be 5-bit integers (0..31)")
    polymod = _polymod([*_hrp_expand(hrp), *values, *[0] * _CHECKSUM_LEN]) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_LEN)]
    return hrp + "1" + "".join(CHARSET[v] for v in [*values, *checksum])


def bech32m_decode(text: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[str, list[int]]:
    """Decode a Bech32m string into its lowercase prefix and its 5-bit data values (checksum removed).

    Accepts all-lowercase or all-uppercase input; mixed case is an error, as BIP-173 requires.
    """
    if len(text) > max_length:
        raise ValueError(f"the string is {len(text)} characters long; at most {max_length} are accepted")
    for c in text:
        if not 33 <= ord(c) <= 126:
            raise ValueError(f"the string contains a character outside printable ASCII: {c!r}")
    lower = text.lower()
    if text != lower and text != text.upper():
        raise ValueError("the string mixes upper and lower case; use one or the other")
    pos = lower.rfind("1")
    if pos == -1:
        raise ValueError("the separator '1' is missing")
    if pos == 0:
        raise ValueError("the prefix before the separator '1' is empty")
    hrp, data_part = lower[:pos], lower[pos + 1 :]
    _check_hrp(hrp)
    if len(data_part) < _CHECKSUM_LEN:
        raise ValueError("the string is too short to hold its 6-character checksum")
    values: list[int] = []
    for c in data_part:
        value = _CHARSET_REV.get(c)
        if value is None:
            raise ValueError(
                f"{c!r} is not a valid character after the separator (1, b, i and o never appear)"
            )
        values.append(value)
    polymod = _polymod([*_hrp_expand(hrp), *values])
    if polymod == _BECH32_CONST:
        raise ValueError("the string carries an original Bech32 (BIP-173) checksum; only Bech32m is accepted")
    if polymod != _BECH32M_CONST:
        raise ValueError("checksum mismatch: the string was mistyped or truncated")
    return hrp, values[:-_CHECKSUM_LEN]


def convert_bits(data: Iterable[int], from_bits: int, to_bits: int, *, pad: bool) -> list[int]:
    """Regroup a sequence of ``from_bits``-wide integers into ``to_bits``-wide ones.

    With ``pad`` (encoding), the last group is zero-filled. Without it (decoding), leftover bits must
    be fewer than ``from_bits`` and all zero, so every byte string has exactly one encoding.
    """
    acc = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise ValueError(f"value {value} does not fit in {from_bits} bits")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
        # Keep only the bits not yet emitted, so the accumulator stays small on long inputs.
        acc &= (1 << bits) - 1
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or acc:
        raise ValueError("invalid padding: the data length is not a whole number of bytes")
    return out


def encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` bytes as a lowercase Bech32m string with prefix ``hrp``."""
    return bech32m_encode(hrp, convert_bits(data, 8, 5, pad=True))


def decode(text: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> tuple[str, bytes]:
    """Decode a Bech32m string into ``(prefix, data bytes)``; the prefix is returned in lowercase."""
    hrp, values = bech32m_decode(text, max_length=max_length)
    return hrp, bytes(convert_bits(values, 5, 8, pad=False))
