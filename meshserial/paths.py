"""Where meshserial keeps configuration, state and runtime files.

``MESHSERIAL_HOME`` overrides everything (tests always set it): config and state then live in that
directory and runtime files (PTY links) in its ``run/`` subdirectory. Otherwise the XDG base directories
are used for a user, and ``/etc/meshserial`` + ``/var/lib/meshserial`` for the system service
(``MESHSERIAL_SYSTEM=1``, as the systemd units set it).
"""

from __future__ import annotations

import os
from pathlib import Path

from meshserial.errors import ConfigError

APP = "meshserial"


def _home_override() -> Path | None:
    value = os.environ.get("MESHSERIAL_HOME")
    return Path(value).expanduser() if value else None


def _system() -> bool:
    return os.environ.get("MESHSERIAL_SYSTEM", "") not in ("", "0")


def config_dir() -> Path:
    """Directory for configuration and trust files (authorized clients, pinned servers)."""
    if (home := _home_override()) is not None:
        return home
    if _system():
        return Path("/etc") / APP
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP


def state_dir() -> Path:
    """Directory for the identity key and other state."""
    if (home := _home_override()) is not None:
        return home
    if _system():
        return Path("/var/lib") / APP
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / APP


def runtime_dir() -> Path:
    """Directory for runtime files such as the stable links to virtual serial ports."""
    if (home := _home_override()) is not None:
        return home / "run"
    if _system():
        return Path("/run") / APP
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / APP
    return state_dir() / "run"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700 (whatever the umask) and return it.

    An existing directory is left as it is: the trust-file checks refuse one that others can write.
    """
    missing: list[Path] = []
    current = path
    for _ in range(64):  # bounded: a path has far fewer components
        if current.exists() or current.parent == current:
            break
        missing.append(current)
        current = current.parent
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir(mode=0o700)
            except FileExistsError:
                continue  # created meanwhile by another process: not ours to change
            # mkdir's mode passes through the umask; a umask such as 0o777 would leave us locked out.
            os.chmod(directory, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {path}: {exc.strerror}") from exc
    if not path.is_dir():
        raise ConfigError(f"cannot use {path}: it is not a directory")
    return path
