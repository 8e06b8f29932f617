"""Who may use our ports and which servers we trust: the two trust files.

Both are plain text in the spirit of OpenSSH's ``authorized_keys`` and ``known_hosts``, so they can
be reviewed and diffed:

* ``authorized_clients`` (server, config dir): ``ms1… PERMS [name="…"] [expires=…]``. PERMS is a
  comma list of ``GLOB=rw|ro`` matched against port names, first match wins. No entry, no match
  or an expired entry means no access.
* ``known_servers`` (client, config dir): ``NAME ms1… [first_seen=…] [via=…]``. A pinned name that
  shows up with another key is always a hard error.

A line of ``authorized_clients`` that does not parse (an unknown option such as a mistyped
``expire=``, a bad id, a second line for the same key) is skipped as a whole and reported with its file
and line, as sshd does with ``authorized_keys``: skipping a line can only take access away (the client
on it is not authorized), never grant it, and the rest of the file stays in force. In ``known_servers``
a bad line is an error instead: skipping a pin would let a changed key through as "new". Every write
goes to a temporary file that replaces the original atomically, under an advisory lock so that a CLI
edit and an invite redemption (``meshserial.invites``) cannot lose each other's change. Times are Unix
seconds (``time.time()``); dates in files are UTC.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hmac
import itertools
import os
import re
import shlex
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal, TypeAlias, assert_never

from meshserial import paths
from meshserial.errors import ConfigError, ServerKeyChanged, UsageError
from meshserial.keys import format_id, parse_id, read_protected_file, sync_dir
from meshserial.proto.text import escape

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AuthorizedClient",
    "AuthorizedClients",
    "KnownServer",
    "KnownServers",
    "Rights",
    "format_ports_spec",
    "parse_duration",
    "parse_expiry",
    "parse_ports_spec",
]

Rights: TypeAlias = Literal["rw", "ro"]
Rules: TypeAlias = tuple[tuple[str, Rights], ...]
#: What ``AuthorizedClients.add`` does when another key's entry already has the name asked for.
NameTaken: TypeAlias = Literal["refuse", "replace", "rename"]

AUTHORIZED_CLIENTS_FILE = "authorized_clients"
KNOWN_SERVERS_FILE = "known_servers"
_GLOB_RE = re.compile(r"[^\s,=\"'#\\]+")
NAME_MAX = 64
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f\"\\]{1,64}")
_SERVER_NAME_RE = re.compile(r"[^\s\x00-\x1f\x7f\"'#=\\]{1,255}")  # a host name, or host:port
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_MODES: dict[str, Rights] = {"rw": "rw", "ro": "ro"}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


# --- small parsers shared by the CLI ---------------------------------------------------------


def parse_ports_spec(spec: str) -> list[tuple[str, Rights]]:
    """Parse ``"ttyUSB0=rw,ttyACM*=ro"`` into ``[("ttyUSB0", "rw"), ("ttyACM*", "ro")]``."""
    rules: list[tuple[str, Rights]] = []
    if not spec.strip():
        raise UsageError("empty port list; write e.g. '*=rw' or 'ttyUSB0=ro'")
    for item in spec.split(","):
        glob, sep, mode = item.strip().partition("=")
        if not sep:
            raise UsageError(f"{item.strip()!r} needs an access mode: write '{item.strip()}=rw' or '=ro'")
        if not _GLOB_RE.fullmatch(glob):
            raise UsageError(f"{glob!r} is not a port name or glob (no spaces, quotes, ',', '=' or '#')")
        if (rights := _MODES.get(mode)) is None:
            raise UsageError(f"access mode {mode!r} for {glob!r} must be 'rw' or 'ro'")
        rules.append((glob, rights))
    return rules


def format_ports_spec(rules: Sequence[tuple[str, str]]) -> str:
    """The inverse of ``parse_ports_spec``."""
    return ",".join(f"{glob}={mode}" for glob, mode in rules)


def parse_duration(text: str) -> float:
    """Parse ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"`` or ``"1w"`` (decimals allowed) into seconds."""
    match = _DURATION_RE.fullmatch(text.strip().lower())
    if match is None:
        raise UsageError(f"{text!r} is not a duration; write a number and a unit, e.g. 90s, 15m, 2h, 7d")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds <= 0:
        raise UsageError(f"duration {text!r} must be longer than zero")
    return seconds


def parse_expiry(text: str, *, now: float | None = None) -> date | datetime:
    """Parse an expiry: a duration from now (``90d``), a UTC date (``2026-12-31``) or an ISO time.

    A date means "valid through that day (UTC)". A time without a zone is taken as UTC. An expiry
    already in the past is refused.
    """
    text, now = text.strip(), resolve_now(now)
    if _DURATION_RE.fullmatch(text.lower()):
        return datetime.fromtimestamp(now + parse_duration(text), UTC).replace(microsecond=0)
    try:
        value = _parse_when(text)
    except ValueError as exc:
        raise UsageError(f"{text!r} is not an expiry: use a duration (90d), a date or an ISO time") from exc
    if _expiry_instant(value) <= now:
        raise UsageError(f"expiry {text!r} is already in the past")
    return value


def _parse_when(text: str) -> date | datetime:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return date.fromisoformat(text)
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def valid_client_name(name: str) -> bool:
    """Whether ``name`` can be stored as ``name="…"``: 1-64 characters, no quotes or controls."""
    return _NAME_RE.fullmatch(name) is not None


def clean_client_name(text: str) -> str | None:
    """``text`` (a host name, or what a peer suggested) made into a client name, or ``None`` if
    nothing usable is left.

    Stricter than :func:`valid_client_name`: a name from the network ends up in ``authorized_clients``,
    in logs and in ``revoke`` output, and must be typed back (``meshserial revoke NAME``). So whatever
    :func:`~meshserial.proto.text.escape` would escape (controls, bidirectional overrides …), quotes,
    backslashes and white space become ``-``.
    """
    safe = "".join("-" if c in '"\\' or c.isspace() or escape(c) != c else c for c in text)
    return safe.strip("-")[:NAME_MAX].rstrip("-") or None


def short_id(public_id: bytes) -> str:
    """An id cut short for messages that list several clients (never for comparing ids)."""
    return format_id(public_id)[:14] + "…"


def parse_timestamp(text: str) -> float:
    """ISO time (UTC if no zone given) to Unix seconds; ``ValueError`` if malformed."""
    value = datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _expiry_instant(value: date | datetime) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() + 86400.0


def _format_when(value: date | datetime) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()


def format_timestamp(ts: float) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return _format_when(datetime.fromtimestamp(ts, UTC))


def resolve_now(now: float | None) -> float:
    """``now`` if the caller passed one (tests do), else the wall clock: expiries are calendar times."""
    return time.time() if now is None else now


# --- file plumbing ---------------------------------------------------------------------------


@contextlib.contextmanager
def locked_file(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock beside ``path`` (the file itself is replaced, so not on it)."""
    paths.ensure_dir(path.parent)
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot lock {path}: {exc.strerror}") from exc
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (mode 0600) so readers see the old or the new file, never half."""
    paths.ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    sync_dir(path.parent)


def split_line(path: Path, lineno: int, line: str) -> list[str]:
    """Split a trust-file line shell-style (quotes allowed, ``#`` starts a comment)."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:
        raise ConfigError(f"{path}:{lineno}: {exc}") from exc


def parse_options(path: Path, lineno: int, tokens: Sequence[str], allowed: set[str]) -> dict[str, str]:
    """``key=value`` tokens to a dict; unknown or repeated keys are a ``ConfigError`` naming the line."""
    options: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(
                f"{path}:{lineno}: unknown option {token!r} (known: {', '.join(sorted(allowed))})"
            )
        if key in options:
            raise ConfigError(f"{path}:{lineno}: option {key!r} given twice")
        options[key] = value
    return options


def read_lines(path: Path, *, secret: bool) -> list[str]:
    """The lines of a trust file after the permission check; no file means no lines."""
    text = read_protected_file(path, secret=secret)
    return [] if text is None else text.splitlines()


# --- authorized clients (server side) --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizedClient:
    """One line of ``authorized_clients``."""

    public_id: bytes
    rules: Rules
    name: str | None = None
    expires: date | datetime | None = None  # a date means "through that day, UTC"
    line: int = 0  # where it was read from, for messages; 0 if not from the file

    @property
    def id_string(self) -> str:
        """The client's id as ``ms1…``."""
        return format_id(self.public_id)

    @property
    def expires_at(self) -> float | None:
        """The Unix time at which the entry stops granting anything (``None``: never)."""
        return None if self.expires is None else _expiry_instant(self.expires)

    def expired(self, now: float) -> bool:
        """Whether the entry has expired at Unix time ``now``."""
        return self.expires is not None and now >= _expiry_instant(self.expires)

    def rights(self, port_name: str, now: float) -> Rights | None:
        """Access to ``port_name``: the mode of the first matching glob; ``None`` if expired or no match."""
        if self.expired(now):
            return None
        for glob, mode in self.rules:
            if fnmatch.fnmatchcase(port_name, glob):
                return mode
        return None

    def to_line(self) -> str:
        """This entry as a line of ``authorized_clients``."""
        parts = [self.id_string, format_ports_spec(self.rules)]
        if self.name is not None:
            parts.append(f'name="{self.name}"')
        if self.expires is not None:
            parts.append(f"expires={_format_when(self.expires)}")
        return " ".join(parts)


class AuthorizedClients:
    """The server's allow-list: ``config_dir()/authorized_clients``. Default deny."""

    HEADER = (
        "# meshserial authorized clients, one per line:\n"
        '#   ms1…  PORT-GLOB=rw|ro[,…]  [name="…"]  [expires=YYYY-MM-DD | ISO time]\n'
        "# The first glob matching a port name decides; no match means no access.\n"
    )

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.config_dir() / AUTHORIZED_CLIENTS_FILE
        self._lines: list[str] = []
        self._entries: dict[bytes, AuthorizedClient] = {}
        #: Lines the last ``load()`` skipped, each as ``FILE:LINE: reason``.
        self.problems: list[str] = []
        #: The entries the last ``add(…, name_taken="replace")`` removed to free their name.
        self.displaced: list[AuthorizedClient] = []

    @property
    def entries(self) -> list[AuthorizedClient]:
        """The entries read by the last ``load()``, in file order."""
        return list(self._entries.values())

    def load(self) -> AuthorizedClients:
        """(Re)read the file; a missing file authorizes nobody. Returns ``self``.

        Lines that do not parse are skipped and listed in :attr:`problems` (``FILE:LINE: reason``);
        the caller reports them. A file that cannot be read at all (or is not safe to trust) raises.
        """
        lines = read_lines(self.path, secret=False)
        entries: dict[bytes, AuthorizedClient] = {}
        problems: list[str] = []
        for lineno, line in enumerate(lines, 1):
            try:
                entry = self._parse_line(lineno, line)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            if entry is None:
                continue
            if (seen := entries.get(entry.public_id)) is not None:
                problems.append(
                    f"{self.path}:{lineno}: {entry.id_string} is already listed on line {seen.line}"
                )
                continue
            entries[entry.public_id] = entry
        self._lines, self._entries, self.problems = lines, entries, problems
        return self

    def _parse_line(self, lineno: int, line: str) -> AuthorizedClient | None:
        tokens = split_line(self.path, lineno, line)
        if not tokens:
            return None
        where = f"{self.path}:{lineno}"
        if len(tokens) < 2:
            raise ConfigError(f"{where}: expected 'ms1… PORT-GLOB=rw|ro …'")
        try:
            public_id = parse_id(tokens[0])
            rules = tuple(parse_ports_spec(tokens[1]))
        except UsageError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        options = parse_options(self.path, lineno, tokens[2:], {"name", "expires"})
        name = options.get("name")
        if name is not None and not valid_client_name(name):
            raise ConfigError(f"{where}: name must be 1-64 characters without quotes or control characters")
        expires: date | datetime | None = None
        if "expires" in options:
            try:
                expires = _parse_when(options["expires"])
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: expires={options['expires']!r} is not a date or ISO time"
                ) from exc
        return AuthorizedClient(public_id=public_id, rules=rules, name=name, expires=expires, line=lineno)

    def _check_round_trip(self, entry: AuthorizedClient) -> None:
        """Refuse to write a line that would not read back as ``entry`` (it would be skipped)."""
        try:
            back = self._parse_line(0, entry.to_line())
        except ConfigError as exc:
            raise UsageError(f"cannot store this entry: {exc}") from None
        if back is None or replace(back, line=0) != entry:
            raise UsageError(f"cannot store this entry: {entry.to_line()!r} would not read back the same")

    def find(self, public_id: bytes) -> AuthorizedClient | None:
        """The entry for ``public_id``, expired or not."""
        return self._entries.get(public_id)

    def rights(self, public_id: bytes, port_name: str, now: float | None = None) -> Rights | None:
        """What ``public_id`` may do on ``port_name``: ``"rw"``, ``"ro"`` or ``None`` (no access)."""
        entry = self._entries.get(public_id)
        return None if entry is None else entry.rights(port_name, resolve_now(now))

    def add(
        self,
        public_id: bytes,
        *,
        name: str | None = None,
        ports_spec: str | Sequence[tuple[str, str]] = "*=rw",
        expires: date | datetime | None = None,
        name_taken: NameTaken = "refuse",
    ) -> AuthorizedClient:
        """Authorize a client, replacing any existing entry for the same id (in place).

        A name is what ``revoke NAME`` and the logs go by, so one name should mean one key. When
        another key's entry already has ``name``: ``"refuse"`` raises :class:`UsageError`;
        ``"replace"`` removes those entries (their keys lose access; :attr:`displaced` lists them);
        ``"rename"`` stores the first free ``NAME-2``, ``NAME-3`` … instead (an invite redemption
        must not fail over a label). The check runs under the file's lock, so two redemptions
        racing for one name still end up with two names.
        """
        if name is not None and not valid_client_name(name):
            raise UsageError("a client name must be 1-64 characters without quotes or control characters")
        spec = ports_spec if isinstance(ports_spec, str) else format_ports_spec(ports_spec)
        entry = AuthorizedClient(
            public_id=public_id, rules=tuple(parse_ports_spec(spec)), name=name, expires=expires
        )
        format_id(public_id)  # validates the length
        self._check_round_trip(entry)
        self.displaced = []
        with locked_file(self.path):
            self.load()
            holders = [e for e in self._entries.values() if e.public_id != public_id and e.name == name]
            if name is not None and holders:
                match name_taken:
                    case "refuse":
                        raise UsageError(
                            f"the name {name!r} is taken by {short_id(holders[0].public_id)} "
                            f"({self.path}:{holders[0].line}): choose another name, or give it to this "
                            "key with --replace (that key loses access)"
                        )
                    case "replace":
                        self.displaced = holders
                    case "rename":
                        entry = replace(entry, name=self._free_name(name, public_id))
                    case _:
                        assert_never(name_taken)
            old = self._entries.get(public_id)
            drop = {e.line for e in self.displaced}
            lines: list[str] = []
            for lineno, line in enumerate(self._lines or self.HEADER.splitlines(), 1):
                if old is not None and lineno == old.line:
                    lines.append(entry.to_line())
                elif lineno not in drop:
                    lines.append(line)
            if old is None:
                lines.append(entry.to_line())
            self._save(lines)
        return self._entries[public_id]

    def _free_name(self, name: str, public_id: bytes) -> str:
        """``name`` with the first suffix ``-2``, ``-3`` … that no other key's entry has (still ≤ 64)."""
        taken = {e.name for e in self._entries.values() if e.public_id != public_id}
        suffixed = (f"{name[: NAME_MAX - 1 - len(str(n))]}-{n}" for n in itertools.count(2))
        return next(candidate for candidate in suffixed if candidate not in taken)

    def remove(self, id_or_name: bytes | str, *, every: bool = False) -> list[AuthorizedClient]:
        """Remove the entry for an id (bytes or ``ms1…``), or the entry with that name.

        A name that several entries have (written by hand, or before names were kept unique) is
        refused with :class:`UsageError` listing them, unless ``every`` is true: revoking more keys
        than meant is not something to do by accident.
        """
        with locked_file(self.path):
            self.load()
            if isinstance(id_or_name, bytes):
                gone = [e for e in self._entries.values() if e.public_id == id_or_name]
            else:
                gone = [e for e in self._entries.values() if e.name == id_or_name]
                if not gone and id_or_name.strip().lower().startswith("ms1"):
                    wanted = parse_id(id_or_name)  # a name was not meant: report a mistyped id
                    gone = [e for e in self._entries.values() if e.public_id == wanted]
            if len(gone) > 1 and not every:
                listed = ", ".join(f"{short_id(e.public_id)} (line {e.line})" for e in gone)
                raise UsageError(
                    f"{len(gone)} clients are named {id_or_name!r} in {self.path}: {listed}; "
                    "revoke one by its ms1… id, or all of them with --all"
                )
            if gone:
                drop = {e.line for e in gone}
                self._save([line for n, line in enumerate(self._lines, 1) if n not in drop])
        return gone

    def _save(self, lines: list[str]) -> None:
        write_atomic(self.path, "".join(f"{line}\n" for line in lines))
        self.load()


# --- known servers (client side) -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownServer:
    """One line of ``known_servers``."""

    name: str
    public_id: bytes
    first_seen: str | None = None
    via: str | None = None
    line: int = 0

    def to_line(self) -> str:
        """This entry as a line of ``known_servers``."""
        parts = [self.name, format_id(self.public_id)]
        if self.first_seen is not None:
            parts.append(f"first_seen={self.first_seen}")
        if self.via is not None:
            parts.append(f"via={self.via}")
        return " ".join(parts)


class KnownServers:
    """The client's pinned server keys: ``config_dir()/known_servers``."""

    HEADER = "# meshserial known servers, one per line:  NAME  ms1…  [first_seen=…]  [via=…]\n"

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or paths.config_dir() / KNOWN_SERVERS_FILE
        self._lines: list[str] = []
        self._entries: dict[str, KnownServer] = {}

    @property
    def entries(self) -> list[KnownServer]:
        """The pins read by the last ``load()``, in file order."""
        return list(self._entries.values())

    def load(self) -> KnownServers:
        """(Re)read the file; a missing file pins nothing. Returns ``self``."""
        lines = read_lines(self.path, secret=False)
        entries: dict[str, KnownServer] = {}
        for lineno, line in enumerate(lines, 1):
            tokens = split_line(self.path, lineno, line)
            if not tokens:
                continue
            where = f"{self.path}:{lineno}"
            if len(tokens) < 2 or not _SERVER_NAME_RE.fullmatch(tokens[0]):
                raise ConfigError(f"{where}: expected 'NAME ms1… [first_seen=…] [via=…]'")
            try:
                public_id = parse_id(tokens[1])
            except UsageError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            options = parse_options(self.path, lineno, tokens[2:], {"first_seen", "via"})
            if (seen := entries.get(tokens[0])) is not None:
                raise ConfigError(f"{where}: {tokens[0]!r} is already pinned on line {seen.line}")
            entries[tokens[0]] = KnownServer(
                name=tokens[0],
                public_id=public_id,
                first_seen=options.get("first_seen"),
                via=options.get("via"),
                line=lineno,
            )
        self._lines, self._entries = lines, entries
        return self

    def lookup(self, name: str) -> bytes | None:
        """The id pinned for ``name``, if any."""
        entry = self._entries.get(name)
        return None if entry is None else entry.public_id

    def names_for(self, public_id: bytes) -> list[str]:
        """Every name pinned to ``public_id``."""
        return [e.name for e in self._entries.values() if e.public_id == public_id]

    def check(self, name: str, public_id: bytes) -> Literal["pinned", "new"]:
        """``"pinned"`` if ``name`` is pinned to this key, ``"new"`` if not pinned at all.

        Raises ``ServerKeyChanged`` if ``name`` is pinned to a different key.
        """
        entry = self._entries.get(name)
        if entry is None:
            return "new"
        if hmac.compare_digest(entry.public_id, public_id):
            return "pinned"
        raise ServerKeyChanged(
            f"server {name!r} presented {format_id(public_id)}, but {self.path}:{entry.line} pins "
            f"{format_id(entry.public_id)}. Someone may be impersonating it. If you know its key "
            f"was changed on purpose (check with the server's owner), run: "
            f"meshserial trust {format_id(public_id)} --name {name} --replace"
        )

    def pin(
        self,
        name: str,
        public_id: bytes,
        *,
        replace: bool = False,
        now: float | None = None,
        via: str | None = None,
    ) -> Literal["added", "unchanged", "replaced"]:
        """Pin ``name`` to ``public_id``; a different existing pin needs ``replace=True``."""
        if not _SERVER_NAME_RE.fullmatch(name):
            raise UsageError(
                f"{name!r} is not usable as a server name (1-255 characters, no spaces, quotes, '#' or '=')"
            )
        if via is not None and not _SERVER_NAME_RE.fullmatch(via):
            raise UsageError(f"{via!r} is not a valid 'via' label")
        entry = KnownServer(
            name=name, public_id=public_id, first_seen=format_timestamp(resolve_now(now)), via=via
        )
        format_id(public_id)
        with locked_file(self.path):
            self.load()
            old = self._entries.get(name)
            if old is not None and old.public_id == public_id:
                return "unchanged"
            if old is not None and not replace:
                self.check(name, public_id)  # raises ServerKeyChanged with the instructions
            lines = self._lines or self.HEADER.splitlines()
            if old is not None:
                lines[old.line - 1] = entry.to_line()
            else:
                lines.append(entry.to_line())
            write_atomic(self.path, "".join(f"{line}\n" for line in lines))
            self.load()
        return "added" if old is None else "replaced"

    def unpin(self, name: str) -> bool:
        """Forget ``name``; returns whether it was pinned."""
        with locked_file(self.path):
            self.load()
            old = self._entries.get(name)
            if old is None:
                return False
            write_atomic(self.path, "".join(f"{x}\n" for n, x in enumerate(self._lines, 1) if n != old.line))
            self.load()
        return True
