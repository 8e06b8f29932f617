"""This machine's identity: one secret seed, the keys derived from it, and how ids are written.

Every node (server or client) has a single 32-byte random seed, stored in ``identity.key``. Two
keys are derived from it with keyed BLAKE2b, each under its own personalisation string so they are
independent:

* an Ed25519 signing key, whose public half *is* the node's identity (shown as ``ms1…``);
* an X25519 key used only as the Noise static key.

The Noise spec (§14) advises against using a Noise static key for anything else, so instead of
converting the Ed25519 key we keep the two separate and let the identity key sign the Noise key
once (the "certificate"). Each side puts ``public_id ‖ certificate ‖ JSON`` in its encrypted
handshake payload; the peer checks the certificate against the static key the handshake proved.
Backing up a node therefore means copying one secret.

Trust files (authorized clients, pinned servers, invites) live in ``meshserial.trust``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nacl.bindings
import nacl.exceptions
import nacl.signing
import nacl.utils

from meshserial import paths
from meshserial.errors import HandshakeError, KeyFileError, UsageError
from meshserial.proto import bech32

__all__ = [
    "CERT_CONTEXT",
    "IDENTITY_FILE",
    "ID_HRP",
    "INVITE_HRP",
    "MAX_HANDSHAKE_EXTRA",
    "PUBLIC_ID_SIZE",
    "SECRET_HRP",
    "Identity",
    "check_directories",
    "create_identity",
    "fingerprint",
    "format_id",
    "identity_path",
    "load_identity",
    "load_or_create_identity",
    "parse_id",
    "read_protected_file",
    "sync_dir",
    "verify_handshake_payload",
]

logger = logging.getLogger(__name__)

ID_HRP = "ms"
SECRET_HRP = "ms-secret-key-"
INVITE_HRP = "msinv"
SEED_SIZE = 32
PUBLIC_ID_SIZE = 32
CERT_SIZE = 64
CERT_CONTEXT = b"meshserial-noise-static-v1:"
IDENTITY_FILE = "identity.key"
# Handshake messages are capped at 1 KiB by the Noise layer; 768 bytes of JSON leaves room for the
# 96-byte id + certificate, the static key and the AEAD tags.
MAX_HANDSHAKE_EXTRA = 768
# Key and trust files are tiny; anything bigger is not ours and is not worth reading.
MAX_FILE_SIZE = 1 << 20

_PERSON_ED25519 = b"ms-ed25519"
_PERSON_X25519 = b"ms-x25519"
_SECRET_PREFIX = SECRET_HRP.upper() + "1"


def _derive(seed: bytes, person: bytes) -> bytes:
    # hashlib zero-pads `person` to 16 bytes exactly as libsodium's crypto_generichash does.
    return hashlib.blake2b(b"", key=seed, person=person, digest_size=32).digest()


class Identity:
    """A node's long-term keys, derived from one secret seed. ``repr`` shows only the public id."""

    __slots__ = ("_certificate", "_noise_private", "_noise_public", "_seed", "_signing_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise UsageError(f"an identity seed is {SEED_SIZE} bytes, not {len(seed)}")
        self._seed = bytes(seed)
        self._signing_key = nacl.signing.SigningKey(_derive(seed, _PERSON_ED25519))
        self._noise_private = _derive(seed, _PERSON_X25519)
        self._noise_public: bytes = nacl.bindings.crypto_scalarmult_base(self._noise_private)
        # Computed once: the signature is deterministic and every handshake sends it.
        self._certificate = self.sign(CERT_CONTEXT + self._noise_public)

    @classmethod
    def generate(cls) -> Identity:
        """Create a new identity from fresh random bytes (not stored anywhere)."""
        return cls(nacl.utils.random(SEED_SIZE))

    @classmethod
    def from_secret_text(cls, text: str) -> Identity:
        """Rebuild an identity from its ``MS-SECRET-KEY-1…`` form; ``UsageError`` if it is malformed."""
        return cls(_decode_secret(text.strip()))

    def secret_text(self) -> str:
        """The seed as ``MS-SECRET-KEY-1…`` (upper-case Bech32m, recognisable by secret scanners)."""
        return bech32.encode(SECRET_HRP, self._seed).upper()

    @property
    def public_id(self) -> bytes:
        """The 32-byte Ed25519 public key that identifies this node."""
        return bytes(self._signing_key.verify_key)

    @property
    def id_string(self) -> str:
        """The public id as ``ms1…``."""
        return format_id(self.public_id)

    @property
    def noise_private(self) -> bytes:
        """The X25519 private key for the Noise handshake."""
        return self._noise_private

    @property
    def noise_public(self) -> bytes:
        """The X25519 public key for the Noise handshake."""
        return self._noise_public

    @property
    def certificate(self) -> bytes:
        """Ed25519 signature over ``CERT_CONTEXT ‖ noise_public``: binds the Noise key to the identity."""
        return self._certificate

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        """The Ed25519 signing key (for rendezvous records). Secret: never log or print it."""
        return self._signing_key

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the identity key; returns the 64-byte detached signature."""
        return bytes(self._signing_key.sign(data).signature)

    def handshake_payload(self, extra: Mapping[str, Any]) -> bytes:
        """``public_id ‖ certificate ‖ compact JSON of extra``, for the encrypted handshake payload."""
        try:
            body = json.dumps(dict(extra), separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise UsageError(f"handshake fields are not plain JSON: {exc}") from exc
        if len(body) > MAX_HANDSHAKE_EXTRA:
            raise UsageError(f"handshake fields take {len(body)} bytes; the limit is {MAX_HANDSHAKE_EXTRA}")
        return self.public_id + self._certificate + body

    def __repr__(self) -> str:
        return f"Identity({self.id_string})"


def verify_handshake_payload(payload: bytes, remote_static: bytes) -> tuple[bytes, dict[str, Any]]:
    """Check a peer's handshake payload against the Noise static key the handshake authenticated.

    Returns ``(public_id, extra)``. Raises ``HandshakeError`` if the payload is malformed or the
    certificate does not bind ``remote_static`` to the claimed identity. Whether that identity is
    *trusted* is for the caller to decide.
    """
    head = PUBLIC_ID_SIZE + CERT_SIZE
    if len(remote_static) != 32:
        raise HandshakeError("the peer's static key is not 32 bytes")
    if len(payload) < head:
        raise HandshakeError("the peer's handshake payload is too short to hold an identity")
    if len(payload) - head > MAX_HANDSHAKE_EXTRA:
        raise HandshakeError("the peer's handshake payload is too long")
    public_id, cert, body = payload[:PUBLIC_ID_SIZE], payload[PUBLIC_ID_SIZE:head], payload[head:]
    try:
        nacl.signing.VerifyKey(public_id).verify(CERT_CONTEXT + remote_static, cert)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise HandshakeError("the peer's certificate does not match its handshake key") from exc
    try:
        extra = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HandshakeError("the peer's handshake fields are not valid JSON") from exc
    if not isinstance(extra, dict):
        raise HandshakeError("the peer's handshake fields are not a JSON object")
    return public_id, extra


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


# --- how ids are written ---------------------------------------------------------------------


def format_id(public_id: bytes) -> str:
    """Write a 32-byte public id as ``ms1…`` (61 characters, checksummed)."""
    if len(public_id) != PUBLIC_ID_SIZE:
        raise UsageError(f"a public id is {PUBLIC_ID_SIZE} bytes, not {len(public_id)}")
    return bech32.encode(ID_HRP, public_id)


def parse_id(text: str) -> bytes:
    """Read an ``ms1…`` id; ``UsageError`` explains what is wrong with anything else."""
    text = text.strip()
    if text.upper().startswith(SECRET_HRP.upper()):
        # Never echo this one back: it is somebody's private key.
        raise UsageError(
            "that is a SECRET key, not a public id; keep it private "
            "(`meshserial id` prints the public id to share)"
        )
    shown = text if len(text) <= 70 else text[:67] + "…"
    try:
        hrp, data = bech32.decode(text)
    except ValueError as exc:
        raise UsageError(f"{shown!r} is not a valid meshserial id: {exc}") from exc
    if hrp == INVITE_HRP:
        raise UsageError("that is an invite code, not an id; redeem it with `meshserial accept`")
    if hrp != ID_HRP:
        raise UsageError(f"{shown!r} is not a meshserial id: ids start with {ID_HRP}1, not {hrp}1")
    if len(data) != PUBLIC_ID_SIZE:
        raise UsageError(f"{shown!r} holds {len(data)} bytes; an id holds {PUBLIC_ID_SIZE}")
    if nacl.bindings.has_crypto_core_ed25519 and not nacl.bindings.crypto_core_ed25519_is_valid_point(data):
        raise UsageError(f"{shown!r} has a valid checksum but is not a usable Ed25519 public key")
    return data


def fingerprint(public_id: bytes) -> str:
    """A shorter, OpenSSH-style form (``SHA256:…``) for display next to an id.

    For display only: compare and store full ``ms1…`` ids. A fingerprint is still 256 bits, but do
    not let users check only its first few characters, which an attacker can match by brute force.
    """
    digest = hashlib.sha256(public_id).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _decode_secret(text: str) -> bytes:
    # Error messages here must never include the text itself.
    try:
        hrp, seed = bech32.decode(text)
    except ValueError as exc:
        raise UsageError(f"the secret key is damaged: {exc}") from exc
    if hrp != SECRET_HRP:
        raise UsageError(f"not a meshserial secret key (expected {_SECRET_PREFIX}…)")
    if len(seed) != SEED_SIZE:
        raise UsageError(f"the secret key holds {len(seed)} bytes instead of {SEED_SIZE}")
    return seed


# --- storage ---------------------------------------------------------------------------------


def identity_path() -> Path:
    """Where this machine's identity lives: ``state_dir()/identity.key``."""
    return paths.state_dir() / IDENTITY_FILE


def read_protected_file(path: Path, *, secret: bool) -> str | None:
    """Read a key or trust file after checking who may touch it; ``None`` if it does not exist.

    The checks are those of OpenSSH's ``StrictModes``: whoever can write ``authorized_clients`` can let
    themselves in, so the file and every directory above it must belong to us (or root) and must not
    be writable by group or others (a world-writable directory with the sticky bit, such as ``/tmp``,
    is fine: nobody else can replace what is in it). ``secret`` files must not even be readable by
    group or others (like an SSH private key). The file checks run on the opened file, so a swap
    between check and read is not possible. POSIX only: elsewhere the profile ACL is relied on.
    """
    try:
        # O_NONBLOCK: a FIFO planted at this path must not hang us; it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path} is not a regular file")
        if os.name == "posix":
            _check_owner(path, st)
            bad_bits = 0o077 if secret else 0o022
            if st.st_mode & bad_bits:
                fix = "600" if secret else "go-w"
                what = "readable or writable" if secret else "writable"
                raise KeyFileError(
                    f"{path} is {what} by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"fix it with: chmod {fix} {path}"
                )
            check_directories(path.parent)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_SIZE and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        raise KeyFileError(f"{path} is too large to be a meshserial file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KeyFileError(f"{path} is not UTF-8 text") from exc


def _check_owner(path: Path, st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise KeyFileError(
            f"{path} belongs to {_user_name(st.st_uid)}, not to {_user_name(me)} or root; "
            f"if its content is yours, fix it with: chown {_user_name(me)} {path}"
        )


def check_directories(directory: Path) -> None:
    """Refuse (``KeyFileError``) if ``directory`` or one above it lets another user replace its entries."""
    current = Path(os.path.abspath(directory))
    for _ in range(64):  # bounded: a path has far fewer components
        try:
            st = os.stat(current)
        except OSError as exc:
            raise KeyFileError(f"cannot check {current}: {exc.strerror}") from exc
        _check_owner(current, st)
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_mode & 0o022 and not sticky:
            raise KeyFileError(
                f"directory {current} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"fix it with: chmod go-w {current}"
            )
        if current.parent == current:
            return
        current = current.parent


def _user_name(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415 - POSIX only, and only for this message

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def load_identity(path: Path | None = None) -> Identity:
    """Load this machine's identity; ``KeyFileError`` if it is missing, too open or malformed."""
    path = path or identity_path()
    identity = _load(path)
    if identity is None:
        raise KeyFileError(f"no identity at {path}; create one with `meshserial keygen`")
    return identity


def _load(path: Path) -> Identity | None:
    text = read_protected_file(path, secret=True)
    if text is None:
        return None
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(keys) != 1:
        raise KeyFileError(f"{path} must hold exactly one {_SECRET_PREFIX}… line, found {len(keys)}")
    try:
        return Identity.from_secret_text(keys[0])
    except UsageError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def create_identity(path: Path | None = None, *, now: datetime | None = None) -> Identity:
    """Create and store a new identity; refuses (``KeyFileError``) if one already exists."""
    path = path or identity_path()
    identity = _create(path, now or datetime.now(UTC))
    if identity is None:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite this machine's identity "
            "(remove the file yourself only if you mean to replace it: every peer must then re-trust "
            "the new id)"
        )
    return identity


def _create(path: Path, now: datetime) -> Identity | None:
    paths.ensure_dir(path.parent)
    identity = Identity.generate()
    text = (
        "# meshserial identity: this machine's SECRET key. Keep it private (mode 0600); back it up.\n"
        f"# created: {now.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        f"# public id: {identity.id_string}\n"
        f"{identity.secret_text()}\n"
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        # A half-written key file would block the next attempt and could not be loaded anyway.
        path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from exc
    sync_dir(path.parent)
    logger.info("created identity %s in %s", identity.id_string, path)
    return identity


def load_or_create_identity(path: Path | None = None) -> tuple[Identity, bool]:
    """Load the identity, creating it on first use; returns ``(identity, created)``."""
    path = path or identity_path()
    identity = _load(path)
    if identity is not None:
        return identity, False
    identity = _create(path, datetime.now(UTC))
    if identity is not None:
        return identity, True
    # Another process created it between our two steps: use theirs.
    return load_identity(path), False


def sync_dir(directory: Path) -> None:
    """fsync a directory so a new or renamed entry in it survives a crash (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
