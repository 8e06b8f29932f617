"""The cipher suite's functions: the direct libsodium path agrees with PyNaCl's wrappers, and a failing
libsodium call is an error, never output."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import nacl.bindings
import nacl.exceptions
import pytest

from meshserial.proto import suite

KEY = bytes(range(32))
NONCE = suite.nonce(7)


@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(range(256)) * 70])
@pytest.mark.parametrize("ad", [None, b"", b"associated"])
def test_direct_cipher_matches_the_wrappers(plaintext: bytes, ad: bytes | None) -> None:
    assert suite.sodium is not None, "PyNaCl's cffi module is part of every supported install"
    ciphertext = suite.encrypt(plaintext, ad, NONCE, KEY)
    assert ciphertext == suite.wrapped_encrypt(plaintext, ad, NONCE, KEY)
    assert len(ciphertext) == len(plaintext) + suite.TAGLEN
    assert suite.decrypt(memoryview(ciphertext), ad, NONCE, KEY) == plaintext
    assert suite.wrapped_decrypt(memoryview(ciphertext), ad, NONCE, KEY) == plaintext
    tampered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    for decrypt in (suite.decrypt, suite.wrapped_decrypt):
        with pytest.raises(nacl.exceptions.CryptoError):
            decrypt(tampered, ad, NONCE, KEY)


def test_nonce_is_four_zero_bytes_and_the_counter_little_endian() -> None:
    assert suite.nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")
    assert suite.nonce(suite.MAX_NONCE) == bytes(4) + b"\xff" * 8


class _FailingEncrypt:
    """libsodium, except that encryption reports failure (it only does for impossible sizes)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    @staticmethod
    def crypto_aead_chacha20poly1305_ietf_encrypt(*_args: Any) -> int:
        return -1


def test_a_failed_libsodium_encryption_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "_lib", _FailingEncrypt(suite._lib))
    with pytest.raises(nacl.exceptions.CryptoError, match="encryption failed"):
        suite.encrypt(b"plaintext", None, NONCE, KEY)


def test_hkdf_is_the_noise_definition() -> None:
    """Noise §4.3 with HMAC-BLAKE2b (block 128): two or three chained outputs of 64 bytes."""
    ck, ikm = bytes(64), b"input key material"
    temp = hmac.new(ck, ikm, hashlib.blake2b).digest()
    out1 = hmac.new(temp, b"\x01", hashlib.blake2b).digest()
    out2 = hmac.new(temp, out1 + b"\x02", hashlib.blake2b).digest()
    out3 = hmac.new(temp, out2 + b"\x03", hashlib.blake2b).digest()
    assert suite.hkdf(ck, ikm, 2) == (out1, out2)
    assert suite.hkdf(ck, ikm, 3) == (out1, out2, out3)
    assert suite.hash_(b"abc") == hashlib.blake2b(b"abc").digest()


def test_dh_agrees_both_ways() -> None:
    a, b = suite.KeyPair.from_private(bytes([1]) * 32), suite.KeyPair.from_private(bytes([2]) * 32)
    assert suite.dh(a.private, b.public) == suite.dh(b.private, a.public)
    assert a.public == nacl.bindings.crypto_scalarmult_base(a.private)
