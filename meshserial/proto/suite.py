"""The crypto functions of the one Noise cipher suite meshserial speaks: 25519_ChaChaPoly_BLAKE2b.

Noise §4 defines a protocol over three kinds of function: DH, a cipher and a hash. This module is those
functions on PyNaCl (libsodium) and the standard library; :mod:`meshserial.proto.noise` builds the
handshake and transport objects on top and never calls a library itself.

* DH = X25519 via ``crypto_scalarmult``; libsodium rejects an all-zero shared secret (a low-order
  public key), which surfaces as :class:`HandshakeError` — §12.1 allows aborting there.
* ENCRYPT = ChaCha20-Poly1305 IETF with the nonce ``4 zero bytes ‖ n as uint64 little-endian`` (§12.3).
* HASH = BLAKE2b-512; HMAC with its 128-byte block; HKDF as §4.3 defines it.

The cipher is reached two ways. PyNaCl's public wrappers validate every argument with eagerly formatted
messages, which costs more than the cipher itself on a small record (and a serial stream is mostly
small records), so when PyNaCl's own cffi module is there the functions below call libsodium through it,
and :data:`sodium` / :data:`ffi` are exposed for callers that keep their own buffers (the transport
records of :class:`~meshserial.proto.noise.CipherState`). Without it everything goes through the
wrappers and :data:`sodium` is ``None``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.utils

from meshserial.errors import HandshakeError, UsageError

__all__ = [
    "DHLEN",
    "HASHLEN",
    "KEYLEN",
    "MAX_NONCE",
    "SUITE",
    "TAGLEN",
    "KeyPair",
    "decrypt",
    "dh",
    "encrypt",
    "hash_",
    "hkdf",
    "nonce",
]

SUITE = "25519_ChaChaPoly_BLAKE2b"
DHLEN = 32
HASHLEN = 64
BLOCKLEN = 128
KEYLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1  # §5.1: this nonce value is reserved (it is the Rekey() nonce, §4.2).

nonce = struct.Struct("<4xQ").pack  # §12.3: 32 bits of zeros, then the 64-bit counter little-endian.

Encrypt = Callable[[bytes, "bytes | None", bytes, bytes], bytes]
Decrypt = Callable[["bytes | memoryview", "bytes | None", bytes, bytes], bytes]


# ---------------------------------------------------------------------------------------------- cipher


def wrapped_decrypt(ciphertext: bytes | memoryview, ad: bytes | None, nonce: bytes, key: bytes) -> bytes:
    """PyNaCl's public wrapper, which wants bytes."""
    plaintext: bytes = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
        bytes(ciphertext), ad, nonce, key
    )
    return plaintext


wrapped_encrypt: Encrypt = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt

#: ENCRYPT(k, n, ad, plaintext) and DECRYPT(k, n, ad, ciphertext), as (plaintext, ad, nonce, key);
#: DECRYPT raises :class:`nacl.exceptions.CryptoError` when the tag does not match.
encrypt: Encrypt = wrapped_encrypt
decrypt: Decrypt = wrapped_decrypt
#: libsodium through PyNaCl's cffi module, or None when that module is missing.
sodium: Any = None
ffi: Any = None

try:
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _alloc = _ffi.new_allocator(should_clear_after_alloc=False)

    def _direct_encrypt(plaintext: bytes, ad: bytes | None, nonce: bytes, key: bytes) -> bytes:
        size = len(plaintext) + TAGLEN
        out = _alloc("unsigned char[]", size)
        rc = _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
            out,
            _ffi.NULL,
            _ffi.from_buffer(plaintext),
            len(plaintext),
            ad or _ffi.NULL,
            len(ad) if ad else 0,
            _ffi.NULL,
            nonce,
            key,
        )
        if rc != 0:
            raise nacl.exceptions.CryptoError("encryption failed")
        return _ffi.buffer(out, size)[:]  # type: ignore[no-any-return]

    def _direct_decrypt(ciphertext: bytes | memoryview, ad: bytes | None, nonce: bytes, key: bytes) -> bytes:
        size = len(ciphertext) - TAGLEN
        out = _alloc("unsigned char[]", max(size, 1))
        rc = _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            out,
            _ffi.NULL,
            _ffi.NULL,
            _ffi.from_buffer(ciphertext),
            len(ciphertext),
            ad or _ffi.NULL,
            len(ad) if ad else 0,
            nonce,
            key,
        )
        if rc != 0:
            raise nacl.exceptions.CryptoError("decryption failed")
        return _ffi.buffer(out, size)[:]  # type: ignore[no-any-return]

    encrypt = _direct_encrypt
    decrypt = _direct_decrypt
    sodium = _lib
    ffi = _ffi
except (ImportError, AttributeError):  # pragma: no cover - a PyNaCl without the cffi module
    pass


# ---------------------------------------------------------------------------------------------- hash


def hash_(data: bytes) -> bytes:
    """HASH(data): BLAKE2b with a 64-byte digest."""
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


def hmac_hash(key: bytes, data: bytes) -> bytes:
    # hashlib.blake2b has block_size 128, so this is exactly HMAC-HASH with BLOCKLEN = 128 (§4.3).
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF as Noise §4.3 defines it (2 or 3 outputs of HASHLEN bytes)."""
    temp_key = hmac_hash(chaining_key, ikm)
    out1 = hmac_hash(temp_key, b"\x01")
    out2 = hmac_hash(temp_key, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, hmac_hash(temp_key, out2 + b"\x03")


# ---------------------------------------------------------------------------------------------- DH


def dh(private: bytes, public: bytes) -> bytes:
    """DH(key_pair, public_key): X25519."""
    try:
        return nacl.bindings.crypto_scalarmult(private, public)
    except nacl.exceptions.CryptoError as exc:
        # libsodium refuses an all-zero result: the peer sent a low-order point (§12.1).
        raise HandshakeError("Diffie-Hellman with a low-order public key") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPair:
    """An X25519 key pair. The private half never appears in ``repr``."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """Derive the public key (libsodium clamps the scalar as X25519 requires)."""
        if len(private) != DHLEN:
            raise UsageError(f"an X25519 private key is {DHLEN} bytes")
        return cls(private=private, public=nacl.bindings.crypto_scalarmult_base(private))

    @classmethod
    def generate(cls) -> KeyPair:
        """GENERATE_KEYPAIR() (§4.1) from the OS CSPRNG via libsodium."""
        return cls.from_private(nacl.utils.random(DHLEN))
