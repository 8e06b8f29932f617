"""One-time invites: pairing a client with a server without copying keys by hand.

1. The server admin runs ``meshserial invite``: we draw an 8-byte invite id and a 16-byte secret,
   store them with the granted ports and an expiry in ``state_dir()/invites`` (mode 0600), and print
   an ``msinv1…`` code holding the server id, the invite id and the secret.
2. The client runs ``meshserial accept msinv1…``: it pins the server id from the code (so the first
   connection is already authenticated, no trust-on-first-use), connects, completes the normal Noise
   XX handshake and sends ``invite_proof(secret, h)`` where ``h`` is the handshake hash.
3. The server recomputes the proof, compares in constant time, marks the invite used and adds the
   client's id to ``authorized_clients`` with the invite's rights, under a name: the one the invite
   was made with (``invite --name``), else the one the client suggested in ``redeem`` (its host
   name), cleaned, made unique with ``-2``, ``-3`` … so that ``revoke NAME`` hits exactly that key.

128 random bits are far beyond guessing, so no PAKE is needed; binding the proof to ``h`` (Noise
§11.2 channel binding) makes a proof seen on one connection worthless on any other. The code is a
bearer credential until used or expired: send it over a channel you trust and keep the TTL short.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from meshserial import paths
from meshserial.errors import ConfigError, Refused, UsageError
from meshserial.keys import INVITE_HRP, PUBLIC_ID_SIZE, Identity, format_id, parse_id
from meshserial.proto import bech32
from meshserial.trust import (
    AuthorizedClients,
    Rules,
    clean_client_name,
    format_ports_spec,
    format_timestamp,
    locked_file,
    parse_options,
    parse_ports_spec,
    parse_timestamp,
    read_lines,
    resolve_now,
    split_line,
    valid_client_name,
    write_atomic,
)

__all__ = [
    "Invite",
    "InviteCode",
    "InviteStore",
    "create_invite",
    "invite_proof",
    "parse_invite",
    "redeem_invite",
]

INVITES_FILE = "invites"
INVITE_VERSION = 1
INVITE_ID_SIZE = 8
INVITE_SECRET_SIZE = 16
MAX_INVITE_TTL = 30 * 86400.0  # a bearer credential: keep it short-lived
MAX_HINTS = 8
# Expired and used invites are kept this long so a late redeemer hears "expired"/"used", not "unknown".
KEEP_SPENT = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteCode:
    """A parsed ``msinv1…`` code. The secret is kept out of ``repr``."""

    server_id: bytes
    invite_id: bytes
    secret: bytes = field(repr=False)
    hints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Invite:
    """A pending (or used) invite as the server stores it."""

    invite_id: bytes
    secret: bytes | None = field(repr=False)  # wiped once used
    rules: Rules
    created: float
    expires: float
    used: float | None = None
    used_by: bytes | None = None
    name: str | None = None  # the client's name once paired (``invite --name``); else it suggests one

    def to_line(self) -> str:
        """This invite as a line of the invites file."""
        parts = [
            self.invite_id.hex(),
            self.secret.hex() if self.secret is not None else "-",
            format_ports_spec(self.rules),
            f"created={format_timestamp(self.created)}",
            f"expires={format_timestamp(self.expires)}",
        ]
        if self.used is not None:
            parts.append(f"used={format_timestamp(self.used)}")
        if self.used_by is not None:
            parts.append(f"by={format_id(self.used_by)}")
        if self.name is not None:
            parts.append(f'name="{self.name}"')
        return " ".join(parts)


class InviteStore:
    """Pending invites: ``state_dir()/invites``, mode 0600 (it holds the secrets)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.state_dir() / INVITES_FILE
        self._invites: dict[bytes, Invite] = {}

    @property
    def invites(self) -> list[Invite]:
        """The invites read by the last ``load()``, used and expired ones included."""
        return list(self._invites.values())

    def load(self) -> InviteStore:
        """(Re)read the file (which must be mode 0600); a missing file holds no invites."""
        invites: dict[bytes, Invite] = {}
        for lineno, line in enumerate(read_lines(self.path, secret=True), 1):
            tokens = split_line(self.path, lineno, line)
            if not tokens:
                continue
            where = f"{self.path}:{lineno}"
            try:
                if len(tokens) < 3:
                    raise ValueError("expected 'ID SECRET PERMS created=… expires=…'")
                options = parse_options(
                    self.path, lineno, tokens[3:], {"created", "expires", "used", "by", "name"}
                )
                if "created" not in options or "expires" not in options:
                    raise ValueError("created= and expires= are required")
                invite_id = bytes.fromhex(tokens[0])
                secret = None if tokens[1] == "-" else bytes.fromhex(tokens[1])
                if len(invite_id) != INVITE_ID_SIZE or (
                    secret is not None and len(secret) != INVITE_SECRET_SIZE
                ):
                    raise ValueError("wrong invite id or secret length")
                name = options.get("name")
                if name is not None and not valid_client_name(name):
                    raise ValueError("name must be 1-64 characters without quotes or control characters")
                invite = Invite(
                    invite_id=invite_id,
                    secret=secret,
                    rules=tuple(parse_ports_spec(tokens[2])),
                    created=parse_timestamp(options["created"]),
                    expires=parse_timestamp(options["expires"]),
                    used=parse_timestamp(options["used"]) if "used" in options else None,
                    used_by=parse_id(options["by"]) if "by" in options else None,
                    name=name,
                )
            except (ValueError, UsageError) as exc:
                raise ConfigError(f"{where}: malformed invite ({exc})") from exc
            invites[invite_id] = invite
        self._invites = invites
        return self

    def find(self, invite_id: bytes) -> Invite | None:
        """The invite with this id, if stored."""
        return self._invites.get(invite_id)

    def _save(self) -> None:
        header = "# meshserial pending invites: SECRET, keep private (mode 0600)\n"
        write_atomic(self.path, header + "".join(f"{i.to_line()}\n" for i in self._invites.values()))

    def add(self, invite: Invite, *, now: float) -> None:
        """Store a new invite, dropping invites that expired more than ``KEEP_SPENT`` ago."""
        with locked_file(self.path):
            self.load()
            self._invites = {k: v for k, v in self._invites.items() if v.expires + KEEP_SPENT > now}
            self._invites[invite.invite_id] = invite
            self._save()

    def _mark_used(self, invite_id: bytes, client_id: bytes, *, now: float) -> None:
        # The caller holds the lock and has just loaded the file. The secret is wiped: a spent
        # invite's secret protects nothing any more and need not sit on disk.
        old = self._invites[invite_id]
        self._invites[invite_id] = replace(old, secret=None, used=now, used_by=client_id)
        self._save()


def _encode_hints(hints: Sequence[str]) -> bytes:
    if len(hints) > MAX_HINTS:
        raise UsageError(f"at most {MAX_HINTS} address hints fit in an invite")
    out = bytearray()
    for hint in hints:
        _check_hint(hint)
        raw = hint.encode("utf-8")
        out += bytes([len(raw)]) + raw
    return bytes(out)


def _check_hint(hint: str) -> None:
    # Only a sanity check: hints are untrusted suggestions, the handshake proves who answers.
    host, sep, port = hint.rpartition(":")
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
        or len(hint.encode("utf-8")) > 255
        or any(c.isspace() or not c.isprintable() for c in hint)
    ):
        raise UsageError(f"address hint {hint!r} is not 'host:port' (IPv6 as '[addr]:port')")


def create_invite(
    identity: Identity,
    *,
    ports_spec: str | Sequence[tuple[str, str]],
    ttl_seconds: float,
    now: float | None = None,
    hints: Sequence[str] = (),
    name: str | None = None,
    store: InviteStore | None = None,
) -> str:
    """Create a one-time invite, store it, and return its ``msinv1…`` code.

    The code is ``version ‖ server id (32) ‖ invite id (8) ‖ secret (16)`` followed by optional
    address hints, each a length byte and a UTF-8 ``host:port``. ``name`` is the name the client
    will have in ``authorized_clients``; it stays on the server (the code does not carry it).
    """
    if not 0 < ttl_seconds <= MAX_INVITE_TTL:
        raise UsageError(f"an invite must expire within {MAX_INVITE_TTL / 86400:.0f} days")
    if name is not None and not valid_client_name(name):
        raise UsageError("a client name must be 1-64 characters without quotes or control characters")
    spec = ports_spec if isinstance(ports_spec, str) else format_ports_spec(ports_spec)
    rules = tuple(parse_ports_spec(spec))
    now = resolve_now(now)
    invite_id, secret = os.urandom(INVITE_ID_SIZE), os.urandom(INVITE_SECRET_SIZE)
    payload = bytes([INVITE_VERSION]) + identity.public_id + invite_id + secret + _encode_hints(hints)
    code = bech32.encode(INVITE_HRP, payload)
    if len(code) > bech32.DEFAULT_MAX_LENGTH:
        raise UsageError("the address hints make the invite code too long")
    invite = Invite(
        invite_id=invite_id, secret=secret, rules=rules, created=now, expires=now + ttl_seconds, name=name
    )
    (store or InviteStore()).add(invite, now=now)
    return code


def parse_invite(code: str) -> InviteCode:
    """Read an ``msinv1…`` code; ``UsageError`` says what is wrong with it."""
    head = 1 + PUBLIC_ID_SIZE + INVITE_ID_SIZE + INVITE_SECRET_SIZE
    try:
        hrp, data = bech32.decode(code.strip())
    except ValueError as exc:
        raise UsageError(f"not a valid invite code: {exc}") from exc
    if hrp != INVITE_HRP:
        raise UsageError(f"not an invite code: invite codes start with {INVITE_HRP}1, not {hrp}1")
    if len(data) < head:
        raise UsageError("the invite code is truncated")
    if data[0] != INVITE_VERSION:
        raise UsageError(f"invite format version {data[0]} is not supported; upgrade meshserial")
    server_id = data[1 : 1 + PUBLIC_ID_SIZE]
    try:
        parse_id(format_id(server_id))
    except UsageError as exc:
        raise UsageError("the invite code does not hold a valid server id") from exc
    hints: list[str] = []
    rest = data[head:]
    while rest:
        size = rest[0]
        raw, rest = rest[1 : 1 + size], rest[1 + size :]
        if len(raw) != size:
            raise UsageError("the invite code holds a truncated address hint")
        try:
            hint = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError("the invite code holds a garbled address hint") from exc
        _check_hint(hint)
        hints.append(hint)
    return InviteCode(
        server_id=server_id,
        invite_id=data[1 + PUBLIC_ID_SIZE : 1 + PUBLIC_ID_SIZE + INVITE_ID_SIZE],
        secret=data[head - INVITE_SECRET_SIZE : head],
        hints=tuple(hints),
    )


def invite_proof(secret: bytes, handshake_hash: bytes) -> bytes:
    """The client's proof of knowing the invite secret, bound to this Noise session (hash ``h``)."""
    return hashlib.blake2b(handshake_hash, key=secret, person=b"ms-invite-v1", digest_size=32).digest()


def redeem_invite(
    invite_id: bytes,
    proof: bytes,
    handshake_hash: bytes,
    client_id: bytes,
    *,
    now: float | None = None,
    client_name: str | None = None,
    store: InviteStore | None = None,
    clients: AuthorizedClients | None = None,
) -> str:
    """Spend an invite for ``client_id`` and authorize it; returns the granted ports spec.

    ``client_name`` is the name the client suggested for itself: the peer's choice, so it is
    cleaned (:func:`~meshserial.trust.clean_client_name`), and a name stored with the invite wins
    over it. A name another key already has gets a ``-2``, ``-3`` … suffix rather than failing the
    pairing.

    Raises ``Refused`` for an unknown, used or expired invite or a wrong proof. The reason is for
    the server's log; what the peer is told is the caller's choice. The invite is marked used
    before the client is added, so a failure in between wastes the invite instead of reusing it.
    """
    store = store or InviteStore()
    clients = clients or AuthorizedClients()
    now = resolve_now(now)
    format_id(client_id)  # check our own inputs before spending the invite
    with locked_file(store.path):
        store.load()
        invite = store.find(invite_id)
        if invite is None:
            raise Refused("unknown invite")
        if invite.used is not None or invite.secret is None:
            raise Refused(f"invite already used at {format_timestamp(invite.used or 0)}")
        if now >= invite.expires:
            raise Refused(f"invite expired at {format_timestamp(invite.expires)}")
        if not hmac.compare_digest(invite_proof(invite.secret, handshake_hash), proof):
            raise Refused("invite proof does not match (wrong secret or a different session)")
        store._mark_used(invite_id, client_id, now=now)
    name = invite.name or (None if client_name is None else clean_client_name(client_name))
    clients.add(client_id, name=name, ports_spec=invite.rules, name_taken="rename")
    return format_ports_spec(invite.rules)
