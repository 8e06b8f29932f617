"""Settings from a TOML file and ``MESHSERIAL_*`` environment variables, for ``share``, ``list``, ``use``.

Precedence, setting by setting: command-line flag > environment variable > config file > built-in
default. The file is the one given with ``--config FILE``, else ``config.toml`` in the config directory
(``~/.config/meshserial``, ``/etc/meshserial`` for the system service, ``$MESHSERIAL_HOME``) when it
exists. Unknown sections and keys are errors, so a typo never goes unnoticed::

    [share]                                   # meshserial share
    devices = ["/dev/ttyUSB0=gps", "sim:echo"]
    listen = "0.0.0.0:7217"                   # the encrypted service
    rfc2217 = "127.0.0.1:7218"                # plain RFC 2217 (unauthenticated)
    baud = 9600
    wait = true                               # wait for devices that are not plugged in yet
    interfaces = ["zt*", "eth0"]              # where to advertise by mDNS
    mdns = true
    rendezvous = "https://rdv.example.net"
    rendezvous_token_file = "rendezvous.token"   # relative paths: next to this file

    [discovery]                               # meshserial list, meshserial use NAME
    interfaces = ["zt*"]
    mdns = true
    rendezvous = "https://rdv.example.net"
    rendezvous_token_file = "rendezvous.token"
    timeout = 3.0

Environment (both sections): ``MESHSERIAL_INTERFACES`` (comma-separated), ``MESHSERIAL_MDNS``
(``0``/``1``), ``MESHSERIAL_RENDEZVOUS``, ``MESHSERIAL_RENDEZVOUS_TOKEN_FILE``; ``share`` only:
``MESHSERIAL_LISTEN``. ``MESHSERIAL_HOME`` and ``MESHSERIAL_SYSTEM`` choose directories (``paths``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meshserial import paths
from meshserial.addresses import DEFAULT_PORT, parse_hostport
from meshserial.errors import ConfigError, UsageError
from meshserial.keys import read_protected_file

CONFIG_FILE = "config.toml"
MAX_CONFIG_SIZE = 1 << 20
DEFAULT_BAUD = 9600
DEFAULT_TIMEOUT = 3.0

T = TypeVar("T")

_SHARE_KEYS = {
    "devices": list,
    "listen": str,
    "rfc2217": str,
    "baud": int,
    "wait": bool,
    "interfaces": list,
    "mdns": bool,
    "rendezvous": str,
    "rendezvous_token_file": str,
}
_DISCOVERY_KEYS = {
    "interfaces": list,
    "mdns": bool,
    "rendezvous": str,
    "rendezvous_token_file": str,
    "timeout": float,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigFile:
    """The sections of one config file, values as written (checked for type), paths made absolute."""

    path: Path | None = None
    share: Mapping[str, Any] = field(default_factory=dict)
    discovery: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareSettings:
    devices: tuple[str, ...]
    listen: tuple[str, int] | None
    rfc2217: tuple[str, int] | None
    baud: int
    wait: bool
    interfaces: tuple[str, ...]
    mdns: bool
    rendezvous: str | None
    rendezvous_token_file: Path | None


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySettings:
    interfaces: tuple[str, ...]
    mdns: bool
    rendezvous: str | None
    rendezvous_token_file: Path | None
    timeout: float


# ------------------------------------------------------------------------------------------ the file


def load(path: Path | None = None) -> ConfigFile:
    """Read ``path``, or the default file if it exists (an empty config otherwise)."""
    explicit = path is not None
    path = path if path is not None else paths.config_dir() / CONFIG_FILE
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return ConfigFile()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    if len(data) > MAX_CONFIG_SIZE:
        raise ConfigError(f"config file {path} is too large")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    unknown = sorted(set(doc) - {"share", "discovery"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown section {unknown[0]!r} (use [share] or [discovery])")
    return ConfigFile(
        path=path,
        share=_section(path, doc, "share", _SHARE_KEYS),
        discovery=_section(path, doc, "discovery", _DISCOVERY_KEYS),
    )


def _section(path: Path, doc: dict[str, Any], name: str, keys: dict[str, type]) -> dict[str, Any]:
    section = doc.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [{name}] must be a table")
    out: dict[str, Any] = {}
    items: dict[str, Any] = section
    for key, raw in items.items():
        kind = keys.get(key)
        if kind is None:
            raise ConfigError(f"config file {path}: unknown key {key!r} in [{name}]")
        value: Any = float(raw) if kind is float and type(raw) is int else raw
        strings = not isinstance(raw, list) or all(isinstance(v, str) for v in raw)
        if type(value) is not kind or not strings:
            what = {list: "a list of strings", str: "a string", int: "an integer", bool: "true or false"}
            raise ConfigError(
                f"config file {path}: [{name}] {key} must be {what.get(kind, 'a number')}, not {raw!r}"
            )
        if key.endswith("_file"):
            out[key] = str((path.parent / Path(str(raw)).expanduser()).resolve())
        else:
            out[key] = tuple(raw) if kind is list else value
    return out


# ------------------------------------------------------------------------------------- environment


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    value = _env(env, name)
    if value is None:
        return None
    if value.lower() in ("1", "yes", "true", "on"):
        return True
    if value.lower() in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: use 1 or 0")


def _env_list(env: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    value = _env(env, name)
    return None if value is None else tuple(p.strip() for p in value.split(",") if p.strip())


def pick(*values: T | None, default: T) -> T:
    """The first value that is not None (flag, environment, file), else ``default``."""
    return next((v for v in values if v is not None), default)


def _parsed(text: str | None, parse: Callable[[str], T], where: str) -> T | None:
    if text is None:
        return None
    try:
        return parse(text)
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _where(file: ConfigFile, section: str, key: str) -> str:
    return f"config file {file.path} [{section}] {key}"


def check_url(url: str | None) -> str | None:
    """A rendezvous base URL (http or https); UsageError otherwise."""
    if url is not None and not url.startswith(("http://", "https://")):
        raise UsageError(f"rendezvous URL {url!r} must start with http:// or https://")
    return url


# ---------------------------------------------------------------------------------------- resolved


def share_settings(
    cli: Mapping[str, Any], file: ConfigFile, env: Mapping[str, str] | None = None
) -> ShareSettings:
    """``share`` settings; ``cli`` holds the flags, ``None`` for a flag not given."""
    env = os.environ if env is None else env
    f = file.share

    def address(key: str, default_port: int | None) -> tuple[str, int] | None:
        return _parsed(
            f.get(key), lambda t: parse_hostport(t, default_port=default_port), _where(file, "share", key)
        )

    listen = pick(
        cli.get("listen"),
        _parsed(_env(env, "MESHSERIAL_LISTEN"), parse_hostport, "MESHSERIAL_LISTEN"),
        address("listen", DEFAULT_PORT),
        default=None,
    )
    rfc2217 = pick(cli.get("rfc2217"), address("rfc2217", None), default=None)
    if listen is None and rfc2217 is None:
        listen = ("0.0.0.0", DEFAULT_PORT)
    devices = tuple(cli.get("devices") or ()) or tuple(f.get("devices", ()))
    if not devices:
        raise UsageError("no device to share: give DEVICE[=NAME]… or 'devices' in a config file")
    baud = pick(cli.get("baud"), f.get("baud"), default=DEFAULT_BAUD)
    if baud <= 0:
        raise ConfigError(f"{_where(file, 'share', 'baud')} must be positive")
    return ShareSettings(
        devices=devices,
        listen=listen,
        rfc2217=rfc2217,
        baud=baud,
        wait=bool(cli.get("wait")) or bool(f.get("wait", False)),
        **_discovery_fields(cli, env, f),
    )


def _discovery_fields(cli: Mapping[str, Any], env: Mapping[str, str], f: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``share`` (where to announce) and ``list``/``use`` (where to look) have in common."""
    return {
        "interfaces": pick(
            tuple(cli.get("interfaces") or ()) or None,
            _env_list(env, "MESHSERIAL_INTERFACES"),
            f.get("interfaces"),
            default=(),
        ),
        "mdns": pick(
            False if cli.get("no_mdns") else None,
            _env_bool(env, "MESHSERIAL_MDNS"),
            f.get("mdns"),
            default=True,
        ),
        "rendezvous": check_url(
            pick(cli.get("rendezvous"), _env(env, "MESHSERIAL_RENDEZVOUS"), f.get("rendezvous"), default=None)
        ),
        "rendezvous_token_file": _token_path(cli, env, f),
    }


def discovery_settings(
    cli: Mapping[str, Any], file: ConfigFile, env: Mapping[str, str] | None = None
) -> DiscoverySettings:
    """``list`` / ``use`` discovery settings; ``cli`` holds the flags, ``None`` for a flag not given."""
    env = os.environ if env is None else env
    f = file.discovery
    timeout = pick(cli.get("timeout"), f.get("timeout"), default=DEFAULT_TIMEOUT)
    if not 0 < timeout <= 3600:
        raise ConfigError(f"{_where(file, 'discovery', 'timeout')} must be between 0 and 3600 seconds")
    return DiscoverySettings(
        **_discovery_fields(cli, env, f),
        timeout=timeout,
    )


def _token_path(cli: Mapping[str, Any], env: Mapping[str, str], section: Mapping[str, Any]) -> Path | None:
    text = pick(
        cli.get("rendezvous_token_file"),
        _env(env, "MESHSERIAL_RENDEZVOUS_TOKEN_FILE"),
        section.get("rendezvous_token_file"),
        default=None,
    )
    return None if text is None else Path(text)


def read_token(path: Path) -> str:
    """A bearer token: the first line of ``path``, which must not be readable by group or others."""
    text = read_protected_file(path, secret=True)
    if text is None:
        raise ConfigError(f"token file {path} does not exist")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"token file {path} does not hold a token (one line of printable ASCII)")
    return token
