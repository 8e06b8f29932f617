"""``meshserial rendezvous``: run the rendezvous service (see docs/rendezvous.md).

Its options, the settings they make, and the coroutine the CLI awaits. aiohttp is imported only when
the service runs, so that other commands start fast.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshserial.errors import UsageError
from meshserial.rendezvous import DEFAULT_HOST, DEFAULT_MAX_IDS_PER_SOURCE, DEFAULT_PORT

if TYPE_CHECKING:
    from meshserial.rendezvous.app import Settings


HELP = "run the rendezvous service: an untrusted registry of signed server records"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("rendezvous", help=HELP, description=HELP + ".", parents=[common])
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``rendezvous`` sub-command's options to ``parser``."""
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        help=f"address to serve HTTP on (default {DEFAULT_HOST}:{DEFAULT_PORT}; put TLS in front of it); "
        f"a bare PORT listens on {DEFAULT_HOST}, like the default, for a proxy on the same machine",
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        type=Path,
        help="SQLite database (default: rendezvous.sqlite3 in the state dir)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        type=Path,
        help="require 'Authorization: Bearer <token>' on writes; FILE holds the token (mode 0600)",
    )
    parser.add_argument(
        "--allow-file",
        metavar="FILE",
        type=Path,
        help="only these server ids may register (one id per line, ms1… or base64url, '#' comments)",
    )
    parser.add_argument(
        "--trust-proxy",
        metavar="CIDR",
        action="append",
        default=[],
        help="believe X-Forwarded-For from this reverse proxy (an address or a network; repeatable). "
        "Without it the header is ignored and the TCP peer is the client",
    )
    parser.add_argument(
        "--max-ids-per-source",
        metavar="N",
        default=str(DEFAULT_MAX_IDS_PER_SOURCE),
        help="how many server identities one client address (IPv6: one /64) may keep live records for "
        f"(default {DEFAULT_MAX_IDS_PER_SOURCE})",
    )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT``, ``:PORT`` (all interfaces) or a bare ``PORT`` (``DEFAULT_HOST``,
    as the default: the service expects TLS in front of it) → (host, port); UsageError otherwise."""
    if text.isascii() and text.isdigit():
        text = f"{DEFAULT_HOST}:{text}"
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not port_text.isascii():
        raise UsageError(f"--listen wants HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise UsageError(f"--listen port out of range: {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UsageError(f"--listen: not an IPv6 address: {host!r}") from exc
    elif ":" in host:
        raise UsageError(f"--listen: write IPv6 addresses in brackets, e.g. [::1]:{port}")
    return host or "0.0.0.0", port


def parse_proxy(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``ADDRESS`` (one host: /32 or /128) or ``NETWORK/PREFIX`` → a network; UsageError otherwise."""
    try:
        network = ipaddress.ip_network(text.strip())
    except ValueError as exc:
        # ip_network's own message says what is wrong ("has host bits set", "does not appear to be ...").
        raise UsageError(f"--trust-proxy: {exc}") from exc
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
        raise UsageError(f"--trust-proxy: write IPv4-mapped addresses as IPv4: {text!r}")
    return network


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Build :class:`Settings` from parsed arguments."""
    from meshserial.rendezvous.app import Settings  # noqa: PLC0415 - aiohttp only when serving

    host, port = parse_listen(args.listen)
    text = args.max_ids_per_source
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 9 and int(text) > 0):
        raise UsageError(f"--max-ids-per-source wants a whole number of at least 1, got {text!r}")
    return Settings(
        host=host,
        port=port,
        db_path=args.db,
        token_file=args.token_file,
        allow_file=args.allow_file,
        trusted_proxies=tuple(dict.fromkeys(parse_proxy(text) for text in args.trust_proxy)),
        max_ids_per_source=int(text),
    )


def _announce(addresses: list[tuple[str, int]]) -> None:
    # On stdout, flushed: scripts and tests wait for this line (and learn the port of ':0').
    where = ", ".join(f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}" for h, p in addresses)
    print(f"rendezvous listening on {where}", flush=True)


async def run_from_args(args: argparse.Namespace) -> int:
    """Serve until cancelled (the CLI cancels on SIGINT/SIGTERM); return the exit status."""
    from meshserial.rendezvous.app import serve  # noqa: PLC0415 - aiohttp only when serving

    await serve(settings_from_args(args), on_listening=_announce)
    return 0
