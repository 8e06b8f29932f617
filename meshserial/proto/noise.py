"""The Noise Protocol Framework (revision 34) for one cipher suite: 25519, ChaChaPoly, BLAKE2b.

Theory of operation
-------------------
This module is the spec's three objects, nothing more (Noise §5):

* :class:`CipherState` — a key ``k`` and a 64-bit counter nonce ``n`` (§5.1), plus ``Rekey()`` (§4.2).
* :class:`SymmetricState` — the chaining key ``ck`` and handshake hash ``h`` (§5.2).
* :class:`HandshakeState` — walks a handshake pattern token by token (§5.3). The caller alternates
  :meth:`HandshakeState.write_message` and :meth:`HandshakeState.read_message` in the order the
  pattern dictates; once :attr:`HandshakeState.complete` is true, :meth:`HandshakeState.split`
  returns the two transport :class:`CipherState` objects.

Patterns come from a table (§7.4 interactive patterns; one-way patterns are deliberately absent: the
secure channel never needs them) and may carry ``pskN`` modifiers (§9). Only the suite
``25519_ChaChaPoly_BLAKE2b`` is implemented; asking for another is a :class:`UsageError`.

The suite's functions (DH, ENCRYPT, HASH, HKDF) come from :mod:`meshserial.proto.suite`.

Errors: a failed decryption or malformed handshake message raises :class:`HandshakeError` during the
handshake and :class:`ProtocolError` afterwards; calling methods out of order is local misuse
(:class:`UsageError`). Sans-IO: no sockets, clocks or threads; randomness is only drawn for ephemeral
keys, and tests inject those.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nacl.exceptions

from meshserial.errors import HandshakeError, ProtocolError, UsageError
from meshserial.proto import suite
from meshserial.proto.suite import DHLEN, HASHLEN, KEYLEN, MAX_NONCE, SUITE, TAGLEN, KeyPair, hash_, hkdf

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PATTERNS",
    "SUITE",
    "TAGLEN",
    "CipherState",
    "HandshakeState",
    "KeyPair",
    "SymmetricState",
]

MAX_MESSAGE_LEN = 65535  # §3: every Noise message fits a 16-bit length.

_nonce = suite.nonce
_ZERO_KEY = bytes(KEYLEN)
_SCRATCH_BODY = 16 * 1024 + 64  # the largest plaintext the framed fast path takes (a full record)
_KINDS = [bytes((kind,)) for kind in range(256)]
_frame_length = struct.Struct(">H").pack
# The transport records' direct path (see CipherState.encrypt_framed); used only once a CipherState
# has made its buffers, which it does only when suite.sodium is there.
_NULL: Any = suite.ffi.NULL if suite.ffi is not None else None
_from_buffer: Any = suite.ffi.from_buffer if suite.ffi is not None else None
_encrypt: Any = getattr(suite.sodium, "crypto_aead_chacha20poly1305_ietf_encrypt", None)
_decrypt: Any = getattr(suite.sodium, "crypto_aead_chacha20poly1305_ietf_decrypt", None)


# --------------------------------------------------------------------------------------------- CipherState


class CipherState:
    """Noise §5.1: a key and a counter nonce. Without a key, encryption is the identity function."""

    __slots__ = ("_k", "_scratch", "n")

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEYLEN:
            raise UsageError(f"a CipherState key is {KEYLEN} bytes")
        self._k = key
        self.n = 0
        # The framed methods' buffers: (view, body pointer, nonce counter, nonce), made on first use.
        self._scratch: tuple[memoryview, Any, Any, Any] | None = None

    def __repr__(self) -> str:
        return f"CipherState(has_key={self._k is not None}, n={self.n})"

    def initialize_key(self, key: bytes | None) -> None:
        """InitializeKey(k): set the key and reset the nonce."""
        if key is not None and len(key) != KEYLEN:
            raise UsageError(f"a CipherState key is {KEYLEN} bytes")
        self._k = key
        self.n = 0

    @property
    def has_key(self) -> bool:
        """HasKey()."""
        return self._k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd(ad, plaintext); increments the nonce."""
        key = self._k
        if key is None:
            return plaintext
        n = self.n
        if n >= MAX_NONCE:
            # Unreachable in practice (2^64 records); refusing keeps the nonce unique, which is the
            # one property ChaChaPoly's security rests on.
            raise UsageError("nonce space exhausted; the session must be re-established")
        ciphertext: bytes = suite.encrypt(plaintext, ad or None, _nonce(n), key)
        self.n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        """DecryptWithAd(ad, ciphertext); increments the nonce only on success (§5.1)."""
        key = self._k
        if key is None:
            return bytes(ciphertext)
        n = self.n
        if n >= MAX_NONCE:
            raise ProtocolError("peer exhausted the nonce space")
        if len(ciphertext) < TAGLEN:
            raise ProtocolError("ciphertext shorter than the authentication tag")
        try:
            plaintext = suite.decrypt(ciphertext, ad or None, _nonce(n), key)
        except nacl.exceptions.CryptoError as exc:
            raise ProtocolError("decryption failed: the message was tampered with or misordered") from exc
        self.n = n + 1
        return plaintext

    def rekey(self) -> None:
        """Rekey() with the default REKEY(k) of §4.2; the nonce keeps counting (§11.3)."""
        if self._k is None:
            raise UsageError("cannot rekey a CipherState without a key")
        self._k = suite.encrypt(_ZERO_KEY, None, _nonce(MAX_NONCE), self._k)[:KEYLEN]

    # ---- transport-phase shortcuts -------------------------------------------------------------------
    #
    # A transport message that starts with a one-byte kind, carried behind its 16-bit length (the
    # framing Noise §3 has in mind). Each record costs one libsodium call into a buffer this object
    # keeps, instead of several allocations and copies: on a serial link most records are a few bytes,
    # and their cost is the work around the cipher, not the cipher.

    def encrypt_framed(self, kind: int, body: bytes | bytearray | memoryview) -> bytes:
        """``uint16_be(len(c)) ‖ c`` where ``c = EncryptWithAd(b"", bytes([kind]) ‖ body)``."""
        n = self.n
        size = len(body) + 1
        scratch = self._scratch
        if scratch is None or size > _SCRATCH_BODY or n >= MAX_NONCE:
            return self._encrypt_framed_slow(kind, body)
        view, out, counter, nonce = scratch
        counter[0] = n
        if _encrypt(out, _NULL, _KINDS[kind] + body, size, _NULL, 0, _NULL, nonce, self._k):
            raise UsageError("encryption failed")  # pragma: no cover - only for impossible sizes
        self.n = n + 1
        total = size + TAGLEN
        view[0] = total >> 8
        view[1] = total & 0xFF
        return bytes(view[: total + 2])

    def decrypt_split(self, message: bytes | memoryview) -> tuple[int, bytes]:
        """``DecryptWithAd(b"", message)`` split into its first byte and the rest."""
        n = self.n
        size = len(message) - TAGLEN
        scratch = self._scratch
        if scratch is None or not 0 < size <= _SCRATCH_BODY or n >= MAX_NONCE:
            return self._decrypt_split_slow(message)
        view, out, counter, nonce = scratch
        counter[0] = n
        if _decrypt(out, _NULL, _NULL, _from_buffer(message), size + TAGLEN, _NULL, 0, nonce, self._k):
            raise ProtocolError("decryption failed: the message was tampered with or misordered")
        self.n = n + 1
        return view[2], bytes(view[3 : size + 2])

    def encrypt_framed_run(
        self, kind: int, data: bytes | bytearray | memoryview, chunk: int
    ) -> bytearray | None:
        """:meth:`encrypt_framed` of every ``chunk``-byte piece of ``data`` in turn, all frames in one
        new buffer (each piece sealed in place there: no per-record copies). ``None`` when the fast
        path is not available; the caller then goes record by record."""
        scratch = self._scratch
        count = -(-len(data) // chunk)
        n = self.n
        if scratch is None or not 0 < chunk <= _SCRATCH_BODY - 1 or n + count >= MAX_NONCE:
            return None
        _, _, counter, nonce = scratch
        key = self._k
        out = bytearray(len(data) + count * (3 + TAGLEN))
        base = _from_buffer(out)
        view = memoryview(data)
        pos = 0
        for start in range(0, len(view), chunk):
            piece = view[start : start + chunk]
            size = len(piece) + 1
            total = size + TAGLEN
            out[pos] = total >> 8
            out[pos + 1] = total & 0xFF
            out[pos + 2] = kind
            out[pos + 3 : pos + 2 + size] = piece
            counter[0] = n
            at = base + pos + 2
            # In place: libsodium XORs each block before it writes it, so c == m is allowed.
            if _encrypt(at, _NULL, at, size, _NULL, 0, _NULL, nonce, key):
                raise UsageError("encryption failed")  # pragma: no cover - only for impossible sizes
            n += 1
            pos += total + 2
        self.n = n
        return out

    def _encrypt_framed_slow(self, kind: int, body: bytes | bytearray | memoryview) -> bytes:
        if len(body) + 1 + TAGLEN > MAX_MESSAGE_LEN:
            raise UsageError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        message = self.encrypt_with_ad(b"", bytes((kind,)) + bytes(body))
        self._make_scratch()
        return _frame_length(len(message)) + message

    def _decrypt_split_slow(self, message: bytes | memoryview) -> tuple[int, bytes]:
        plaintext = self.decrypt_with_ad(b"", message)
        if not plaintext:
            raise ProtocolError("an empty transport message")
        self._make_scratch()
        return plaintext[0], plaintext[1:]

    def _make_scratch(self) -> None:
        """Set up the fast path after a first record went the general way (it needs libsodium through
        cffi, a key, and a little-endian machine, where the nonce counter is stored in place)."""
        if self._scratch is not None or self._k is None or suite.sodium is None or sys.byteorder != "little":
            return
        buf = suite.ffi.new("unsigned char[]", 2 + _SCRATCH_BODY + TAGLEN)
        nonce = suite.ffi.new("unsigned char[]", 12)  # §12.3: 4 zero bytes, then n as uint64 little-endian
        counter = suite.ffi.cast("uint64_t *", nonce + 4)
        self._scratch = (memoryview(suite.ffi.buffer(buf)), buf + 2, counter, nonce)


# --------------------------------------------------------------------------------------------- SymmetricState


class SymmetricState:
    """Noise §5.2: chaining key, handshake hash and the handshake CipherState."""

    __slots__ = ("_ck", "cipher", "h")

    def __init__(self, protocol_name: bytes) -> None:
        # InitializeSymmetric: pad a short name with zeros, hash a long one.
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hash_(protocol_name)
        self._ck = self.h
        self.cipher = CipherState()

    def __repr__(self) -> str:
        return f"SymmetricState(cipher={self.cipher!r})"

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(ikm); HASHLEN 64 means the temp key is truncated to 32 bytes."""
        self._ck, temp_k = hkdf(self._ck, input_key_material, 2)
        self.cipher.initialize_key(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        """MixHash(data)."""
        self.h = hash_(self.h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """MixKeyAndHash(ikm), used by the ``psk`` token (§9)."""
        self._ck, temp_h, temp_k = hkdf(self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """EncryptAndHash(plaintext): the handshake hash is the associated data."""
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """DecryptAndHash(ciphertext); any failure here is a handshake failure."""
        try:
            plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        except ProtocolError as exc:
            raise HandshakeError(str(exc)) from exc
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Split(): (initiator→responder, responder→initiator) CipherStates."""
        temp_k1, temp_k2 = hkdf(self._ck, b"", 2)
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])


# --------------------------------------------------------------------------------------------- patterns


@dataclass(frozen=True, slots=True, kw_only=True)
class Pattern:
    """A handshake pattern (§7): pre-message tokens for each side, then the message token lists."""

    name: str
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]


def _p(name: str, ipre: str, rpre: str, *messages: str) -> Pattern:
    return Pattern(
        name=name,
        initiator_pre=tuple(ipre.split()),
        responder_pre=tuple(rpre.split()),
        messages=tuple(tuple(m.replace(",", " ").split()) for m in messages),
    )


# §7.4 interactive fundamental patterns.
PATTERNS: dict[str, Pattern] = {
    p.name: p
    for p in (
        _p("NN", "", "", "e", "e, ee"),
        _p("NK", "", "s", "e, es", "e, ee"),
        _p("NX", "", "", "e", "e, ee, s, es"),
        _p("KN", "s", "", "e", "e, ee, se"),
        _p("KK", "s", "s", "e, es, ss", "e, ee, se"),
        _p("KX", "s", "", "e", "e, ee, se, s, es"),
        _p("XN", "", "", "e", "e, ee", "s, se"),
        _p("XK", "", "s", "e, es", "e, ee", "s, se"),
        _p("XX", "", "", "e", "e, ee, s, es", "s, se"),
        _p("IN", "", "", "e, s", "e, ee, se"),
        _p("IK", "", "s", "e, es, s, ss", "e, ee, se"),
        _p("IX", "", "", "e, s", "e, ee, se, s, es"),
    )
}

_TOKENS = frozenset({"e", "s", "ee", "es", "se", "ss", "psk"})


def _parse_pattern(handshake: str) -> tuple[Pattern, int]:
    """Resolve e.g. ``XXpsk3`` or ``NNpsk0+psk2`` to a pattern with psk tokens inserted (§9.2)."""
    base = handshake[:2]
    pattern = PATTERNS.get(base)
    if pattern is None:
        raise UsageError(f"unsupported Noise handshake pattern {handshake!r}")
    modifiers = handshake[2:].split("+") if len(handshake) > 2 else []
    messages = [list(m) for m in pattern.messages]
    psk_count = 0
    for modifier in modifiers:
        if not modifier.startswith("psk") or not modifier[3:].isdigit():
            raise UsageError(f"unsupported Noise pattern modifier {modifier!r}")
        index = int(modifier[3:])
        if index > len(messages):
            raise UsageError(f"modifier {modifier!r} points past the last message")
        # psk0 goes first in message 1; pskN goes last in message N.
        if index == 0:
            messages[0].insert(0, "psk")
        else:
            messages[index - 1].append("psk")
        psk_count += 1
    resolved = Pattern(
        name=handshake,
        initiator_pre=pattern.initiator_pre,
        responder_pre=pattern.responder_pre,
        messages=tuple(tuple(m) for m in messages),
    )
    return resolved, psk_count


def _parse_protocol_name(protocol_name: str) -> tuple[Pattern, int]:
    parts = protocol_name.split("_", 2)
    if len(parts) != 3 or parts[0] != "Noise":
        raise UsageError(f"not a Noise protocol name: {protocol_name!r}")
    if parts[2] != SUITE:
        raise UsageError(f"unsupported Noise cipher suite {parts[2]!r}; only {SUITE} is implemented")
    return _parse_pattern(parts[1])


# --------------------------------------------------------------------------------------------- HandshakeState


class HandshakeState:
    """Noise §5.3 for one party.

    ``static`` / ``ephemeral`` are private keys (32 bytes); ``ephemeral`` is for known-answer tests
    only — production code lets GENERATE_KEYPAIR() draw a fresh one. ``remote_static`` /
    ``remote_ephemeral`` are the peer's public keys known in advance (pre-messages, §7.1).
    """

    __slots__ = (
        "_e",
        "_failed",
        "_initiator",
        "_message_index",
        "_pattern",
        "_psks",
        "_re",
        "_rs",
        "_s",
        "_ss",
        "_uses_psk",
    )

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        static: bytes | None = None,
        ephemeral: bytes | None = None,
        remote_static: bytes | None = None,
        remote_ephemeral: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        pattern, psk_count = _parse_protocol_name(protocol_name)
        if len(psks) != psk_count:
            raise UsageError(f"{protocol_name} needs {psk_count} pre-shared key(s), got {len(psks)}")
        if any(len(psk) != 32 for psk in psks):
            raise UsageError("a Noise pre-shared key is 32 bytes")
        for key in (remote_static, remote_ephemeral):
            if key is not None and len(key) != DHLEN:
                raise UsageError(f"an X25519 public key is {DHLEN} bytes")
        self._pattern = pattern
        self._initiator = initiator
        self._s = KeyPair.from_private(static) if static is not None else None
        self._e = KeyPair.from_private(ephemeral) if ephemeral is not None else None
        self._rs = remote_static
        self._re = remote_ephemeral
        self._psks = list(psks)
        self._uses_psk = psk_count > 0
        self._message_index = 0
        self._failed = False
        self._ss = SymmetricState(protocol_name.encode("ascii"))
        self._ss.mix_hash(prologue)
        # Pre-messages (§7.1): the initiator's first, then the responder's, hashed in that order.
        for pre, mine in ((pattern.initiator_pre, initiator), (pattern.responder_pre, not initiator)):
            for token in pre:
                self._ss.mix_hash(self._pre_message_key(token, mine))
        for message in pattern.messages:
            for token in message:
                if token not in _TOKENS:  # pragma: no cover - the table is static
                    raise UsageError(f"unknown token {token!r}")

    def __repr__(self) -> str:
        return (
            f"HandshakeState({self._pattern.name!r}, initiator={self._initiator}, "
            f"message={self._message_index}/{len(self._pattern.messages)})"
        )

    def _pre_message_key(self, token: str, mine: bool) -> bytes:
        # Every supported pattern's pre-messages are a single "s" (§7.4), so that is all we handle.
        if token != "s":  # pragma: no cover - the table is static
            raise UsageError(f"unsupported pre-message token {token!r}")
        if mine:
            if self._s is None:
                raise UsageError(f"{self._pattern.name} needs our static key up front")
            return self._s.public
        if self._rs is None:
            raise UsageError(f"{self._pattern.name} needs the peer's static key up front")
        return self._rs

    # ----------------------------------------------------------------------------------------- properties

    @property
    def initiator(self) -> bool:
        """True for the party that sends the first handshake message."""
        return self._initiator

    @property
    def complete(self) -> bool:
        """True once every message of the pattern has been written or read."""
        return self._message_index >= len(self._pattern.messages)

    @property
    def is_my_turn(self) -> bool:
        """True when the next pattern message is ours to write."""
        return not self.complete and (self._message_index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """GetHandshakeHash() (§5.2): the channel binding value once the handshake is complete."""
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known."""
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The peer's ephemeral public key, once known."""
        return self._re

    # ----------------------------------------------------------------------------------------- messages

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise UsageError("the handshake already failed")
        if self.complete:
            raise UsageError("the handshake is already complete")
        if self.is_my_turn != writing:
            raise UsageError("it is not our turn to " + ("write" if writing else "read"))

    def _dh_token(self, token: str) -> bytes:
        # "es" is DH(initiator's e, responder's s); from the responder's side the roles swap (§5.3).
        local_name, remote_name = token[0], token[1]
        if not self._initiator:
            local_name, remote_name = remote_name, local_name
        local = self._e if local_name == "e" else self._s
        remote = self._re if remote_name == "e" else self._rs
        if local is None or remote is None:  # pragma: no cover - every pattern sends "s" before using it
            raise UsageError(f"token {token!r} needs a key that this party does not have")
        return suite.dh(local.private, remote)

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage(payload): the next handshake message, payload encrypted when a key exists."""
        self._check_turn(writing=True)
        try:
            return self._write(payload)
        except (HandshakeError, UsageError):
            # h and ck may be half-updated: the state cannot be resumed.
            self._failed = True
            raise

    def _write(self, payload: bytes) -> bytes:
        ss = self._ss
        out: list[bytes] = []
        for token in self._pattern.messages[self._message_index]:
            if token == "e":
                if self._e is None:
                    self._e = KeyPair.generate()
                out.append(self._e.public)
                ss.mix_hash(self._e.public)
                if self._uses_psk:
                    ss.mix_key(self._e.public)  # §9.2
            elif token == "s":
                if self._s is None:
                    raise UsageError(f"{self._pattern.name} needs our static key")
                out.append(ss.encrypt_and_hash(self._s.public))
            elif token == "psk":
                ss.mix_key_and_hash(self._psks.pop(0))
            else:
                ss.mix_key(self._dh_token(token))
        out.append(ss.encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE_LEN:
            raise UsageError(f"handshake message would exceed {MAX_MESSAGE_LEN} bytes")
        self._message_index += 1
        return message

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage(message): returns the payload; any defect is a :class:`HandshakeError`."""
        self._check_turn(writing=False)
        try:
            return self._read(message)
        except HandshakeError:
            # A failed read leaves h and ck half-updated: the state cannot be resumed (§5.3).
            self._failed = True
            raise

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError(f"handshake message longer than {MAX_MESSAGE_LEN} bytes")
        ss = self._ss
        view = memoryview(message)
        offset = 0
        for token in self._pattern.messages[self._message_index]:
            if token == "e":
                if len(view) - offset < DHLEN:
                    raise HandshakeError("handshake message too short for an ephemeral key")
                self._re = bytes(view[offset : offset + DHLEN])
                offset += DHLEN
                ss.mix_hash(self._re)
                if self._uses_psk:
                    ss.mix_key(self._re)  # §9.2
            elif token == "s":
                size = DHLEN + TAGLEN if ss.cipher.has_key else DHLEN
                if len(view) - offset < size:
                    raise HandshakeError("handshake message too short for a static key")
                self._rs = ss.decrypt_and_hash(bytes(view[offset : offset + size]))
                offset += size
            elif token == "psk":
                ss.mix_key_and_hash(self._psks.pop(0))
            else:
                try:
                    ss.mix_key(self._dh_token(token))
                except UsageError as exc:  # pragma: no cover - guarded by the pattern table
                    raise HandshakeError(str(exc)) from exc
        rest = view[offset:]
        if ss.cipher.has_key and len(rest) < TAGLEN:
            raise HandshakeError("handshake payload shorter than the authentication tag")
        payload = ss.decrypt_and_hash(bytes(rest))
        self._message_index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Split() (§5.2): returns ``(send, receive)`` CipherStates from this party's point of view."""
        if not self.complete or self._failed:
            raise UsageError("the handshake is not complete")
        initiator_to_responder, responder_to_initiator = self._ss.split()
        if self._initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder
