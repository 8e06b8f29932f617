"""Argument types and option groups shared by several sub-commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from meshserial import config
from meshserial.addresses import parse_hostport
from meshserial.errors import UsageError
from meshserial.finder import FindOptions
from meshserial.proto.settings import Parity, SerialSettings, StopBits
from meshserial.trust import parse_duration
from meshserial.voice import Voice


def say(line: str) -> None:
    """A result line on stdout, flushed at once (scripts and tests wait for it)."""
    print(line, flush=True)


def note(line: str) -> None:
    """A note for the person at the terminal, on stderr."""
    print(f"meshserial: {line}", file=sys.stderr, flush=True)


def _ask_blocking(question: str) -> str:
    sys.stderr.write(f"meshserial: {question}")
    sys.stderr.flush()
    return sys.stdin.readline()


async def _ask(question: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, _ask_blocking, question)


def terminal_voice(*, questions: bool = False) -> Voice:
    """Where the application's lines go from the command line; questions only on a terminal."""
    return Voice(say=say, note=note, ask=_ask if questions and sys.stdin.isatty() else None)


def hostport(default_port: int | None) -> type | object:
    """An argparse type for an address to connect to: ``HOST:PORT`` (or ``HOST`` with a default port)."""

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text, default_port=default_port)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "HOST:PORT"
    return parse


def listen_address(bare_host: str, default_port: int | None = None) -> type | object:
    """An argparse type for an address to bind: ``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` (every
    interface), or a bare ``PORT`` as ser2net and socat take it, which binds ``bare_host``.

    Each option picks ``bare_host`` and says it in its help: a bare port is what people type, so it
    binds what is safe for that service (loopback for an unauthenticated one).
    """

    def parse(text: str) -> tuple[str, int]:
        word = text.strip()
        if word.isascii() and word.isdigit():
            if len(word) > 5 or int(word) > 65535:
                raise argparse.ArgumentTypeError(f"port {word} is out of range (0-65535)")
            return bare_host, int(word)
        try:
            return parse_hostport(text, default_port=default_port)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "HOST:PORT"
    return parse


def port_number(text: str) -> int:
    """A TCP port, 1-65535."""
    word = text.strip()
    if not (word.isascii() and word.isdigit() and len(word) <= 5 and 0 < int(word) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(word)


def seconds(text: str) -> float:
    """``2.5``, ``90s``, ``15m``, ``2h``."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = parse_duration(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not value >= 0 or value > 30 * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable duration")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def parity(text: str) -> Parity:
    try:
        return Parity.from_letter(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def stopbits(text: str) -> StopBits:
    try:
        return StopBits.from_count(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"stop bits {text!r}: use 1, 1.5 or 2") from None


def on_off(text: str) -> bool:
    value = text.lower()
    if value in ("1", "on", "yes", "true", "high"):
        return True
    if value in ("0", "off", "no", "false", "low"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: use on or off")


def add_line_settings(
    parser: argparse.ArgumentParser, *, default_baud: int | None, shown_default: int | None = None
) -> None:
    group = parser.add_argument_group("line settings")
    shown = shown_default or default_baud
    group.add_argument(
        "--baud",
        type=positive_int,
        default=default_baud,
        metavar="N",
        help="baud rate" + (f" (default {shown})" if shown else ""),
    )
    group.add_argument(
        "--databits", type=int, choices=(5, 6, 7, 8), default=None, help="data bits (default 8)"
    )
    group.add_argument("--parity", type=parity, default=None, metavar="N|E|O|M|S", help="parity (default N)")
    group.add_argument(
        "--stopbits", type=stopbits, default=None, metavar="1|1.5|2", help="stop bits (default 1)"
    )


def line_settings(args: argparse.Namespace, *, always: bool) -> SerialSettings | None:
    """The settings the flags ask for; ``None`` when none was given and ``always`` is false."""
    given = any(getattr(args, k) is not None for k in ("baud", "databits", "parity", "stopbits"))
    if not (given or always):
        return None
    try:
        return SerialSettings().with_changes(
            baudrate=args.baud, bytesize=args.databits, parity=args.parity, stopbits=args.stopbits
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"settings file (TOML; default: {config.CONFIG_FILE} in the config directory, if it exists); "
        "flags and MESHSERIAL_* variables override it",
    )


def add_discovery_options(parser: argparse.ArgumentParser, *, timeout: bool) -> None:
    """Where ``list`` and ``use NAME`` look: mDNS interfaces and a rendezvous."""
    group = parser.add_argument_group("discovery")
    group.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="NAME|GLOB",
        help="look with mDNS on these interfaces only (repeatable; e.g. 'zt*', eth0; default: every "
        "up, non-loopback, multicast interface)",
    )
    group.add_argument("--no-mdns", action="store_true", help="do not look with mDNS")
    group.add_argument("--rendezvous", metavar="URL", help="also ask this rendezvous service")
    group.add_argument(
        "--rendezvous-token-file",
        type=Path,
        metavar="FILE",
        help="bearer token for a rendezvous that protects reads (file mode 0600)",
    )
    if timeout:
        group.add_argument(
            "--timeout",
            type=seconds,
            metavar="S",
            help=f"wait at most S seconds for answers (default {config.DEFAULT_TIMEOUT:g}; "
            "usually done in under a second)",
        )
    add_config_option(parser)


def find_options(args: argparse.Namespace) -> FindOptions:
    """:class:`FindOptions` from the discovery flags, the environment and the config file."""
    cli: dict[str, Any] = {
        key: getattr(args, key, None)
        for key in ("interfaces", "no_mdns", "rendezvous", "rendezvous_token_file", "timeout")
    }
    found = config.discovery_settings(cli, config.load(args.config))
    if found.timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    return FindOptions(
        interfaces=found.interfaces,
        mdns=found.mdns,
        rendezvous=found.rendezvous,
        rendezvous_token=None
        if found.rendezvous_token_file is None
        else config.read_token(found.rendezvous_token_file),
        timeout=found.timeout,
    )
