"""Identity and trust commands: ``keygen``, ``id``, ``authorize``, ``revoke``, ``trust``, ``invite``,
``accept``.

An invite code is a bearer credential until it is used, so it stays out of command lines: ``invite``
prints it on stdout only, with a hint that does not repeat it, and ``accept`` reads it from a prompt
that does not echo it (on a terminal) or from standard input, so it lands in neither shell history nor
the process list. The code also says where to connect: unless told (``--address``), ``invite`` puts
in the port ``share`` listens on at this machine's addresses, then ``HOSTNAME.local``; ``accept`` tries
them in turn, those on a network it is on itself first, each with a short timeout.

Client names are what ``revoke NAME`` and the logs go by, so one name means one key: ``authorize``
refuses a name another key has unless ``--replace``, an invite redemption makes the name unique, and
``revoke`` refuses a name several entries share unless ``--all``.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from meshserial import config
from meshserial.addresses import DEFAULT_PORT, format_hostport, parse_hostport
from meshserial.cli.options import add_config_option, note, port_number
from meshserial.client import connect_secure
from meshserial.discovery.overlay import (
    Interface,
    address_rank,
    is_container_plumbing,
    list_interfaces,
    select_interfaces,
)
from meshserial.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    HandshakeError,
    MeshserialError,
    UsageError,
)
from meshserial.finder import server_label
from meshserial.invites import InviteCode, create_invite, invite_proof, parse_invite
from meshserial.keys import (
    Identity,
    create_identity,
    fingerprint,
    format_id,
    load_or_create_identity,
    parse_id,
)
from meshserial.proto import session as sess
from meshserial.proto.text import escape
from meshserial.trust import (
    AuthorizedClients,
    KnownServers,
    clean_client_name,
    parse_duration,
    parse_expiry,
    parse_ports_spec,
)

# Interface addresses put in a code (HOSTNAME.local comes on top). Each IPv4 hint costs about 34
# characters of code; four cover LAN, Wi-Fi and an overlay or two and keep the code near 280
# characters, still one paste. More are left out with a note.
MAX_INVITE_ADDRESSES = 4
# With several addresses to try, a dead one (a LAN address seen from across the overlay) must not
# cost the default 10 s each; a live server answers the whole exchange in well under a second.
PER_ADDRESS_TIMEOUT = 3.0
SINGLE_ADDRESS_TIMEOUT = 10.0
MAX_CODE_INPUT = 4096  # a code is at most 1023 characters; more on stdin is not a code
_WILDCARDS = ("0.0.0.0", "::", "")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "keygen",
        parents=[common],
        help="create this machine's identity",
        description="Create this machine's identity (refuses to overwrite an existing one).",
    )
    p.set_defaults(func=keygen)

    p = sub.add_parser(
        "id",
        parents=[common],
        help="print this machine's identity (ms1…)",
        description="Print this machine's public identity, to give to the other side (created on "
        "first use, like keygen).",
    )
    p.add_argument("--fingerprint", action="store_true", help="also print the short fingerprint")
    p.set_defaults(func=show_id)

    p = sub.add_parser(
        "authorize",
        parents=[common],
        help="allow a client key to use ports",
        description="Allow a client (its ms1… id) to use this server's ports.",
    )
    p.add_argument("id", metavar="ID", help="the client's ms1… identity (from 'meshserial id' on it)")
    p.add_argument(
        "--name", help="a name for the client (shown as the port holder; 'revoke NAME' goes by it)"
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="give --name to this key even if another key has it: that key's entry is removed "
        "(it loses access)",
    )
    p.add_argument(
        "--ports",
        default="*=rw",
        metavar="SPEC",
        help="rights per port-name glob, first match wins, e.g. 'gps-*=rw,*=ro' (default *=rw)",
    )
    p.add_argument("--expires", metavar="WHEN", help="a date (YYYY-MM-DD), ISO time, or duration (90d)")
    p.set_defaults(func=authorize)

    p = sub.add_parser(
        "revoke",
        parents=[common],
        help="remove a client key (ends its live sessions)",
        description="Remove a client from authorized_clients; a running server ends its "
        "sessions within a second.",
    )
    p.add_argument("who", metavar="ID|NAME")
    p.add_argument(
        "--all", dest="every", action="store_true", help="revoke every client with that name (if several)"
    )
    p.set_defaults(func=revoke)

    p = sub.add_parser(
        "trust",
        parents=[common],
        help="pin a server's key under a name",
        description="Pin a server's identity under a name (the host you connect to).",
    )
    p.add_argument("id", metavar="ID", help="the server's ms1… identity")
    p.add_argument("--name", required=True, help="the server name: HOST, or HOST:PORT for a non-default port")
    p.add_argument("--replace", action="store_true", help="replace an existing pin with a different key")
    p.set_defaults(func=trust)

    p = sub.add_parser(
        "invite",
        parents=[common],
        help="print a one-time pairing code",
        description="Create a one-time code that pairs a client with this server. The code goes to "
        "stdout: hand it over on a channel you trust; on the client, 'meshserial accept' asks for it.",
    )
    p.add_argument("--ports", default="*=rw", metavar="SPEC", help="rights the code grants (default *=rw)")
    p.add_argument("--ttl", default="15m", help="how long the code stays valid (default 15m)")
    p.add_argument(
        "--name",
        help="the client's name in authorized_clients (default: the host name it sends; "
        "-2, -3 … is added when another key has the name)",
    )
    p.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="where clients reach this server (repeatable; stored in the code; default: this "
        "machine's addresses on the port share listens on, then HOSTNAME.local)",
    )
    p.add_argument(
        "--port",
        type=port_number,
        metavar="PORT",
        help="the port share listens on (default: 'listen' in [share] of the config file, "
        f"else {DEFAULT_PORT})",
    )
    p.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="NAME|GLOB",
        help="put in only the addresses of these interfaces (repeatable; e.g. 'zt*'; default: every "
        "interface that is up, but loopback and container bridges)",
    )
    add_config_option(p)
    p.set_defaults(func=invite)

    p = sub.add_parser(
        "accept",
        parents=[common],
        help="pair with a server using its invite code",
        description="Redeem an invite: pin the server and get this machine authorized. Without CODE "
        "(or with '-') the code is read from a prompt that does not show it, or from standard input "
        "when that is not a terminal: it stays out of shell history and the process list.",
    )
    p.add_argument("code", nargs="?", default="-", metavar="CODE", help="the msinv1… code (default: ask)")
    p.add_argument(
        "--address", metavar="HOST[:PORT]", help="server address (default: the ones in the code, in turn)"
    )
    p.add_argument("--name", help="name to pin the server under (default: the host it answered at)")
    p.set_defaults(func=accept)


def _identity() -> Identity:
    """This machine's identity, made on first use (and said so)."""
    identity, created = load_or_create_identity()
    if created:
        note(f"created a new identity {identity.id_string}")
    return identity


def keygen(args: argparse.Namespace) -> int:
    identity = create_identity()
    print(identity.id_string)
    return 0


def show_id(args: argparse.Namespace) -> int:
    # On a fresh machine the first `meshserial id` makes the identity (saying so on stderr), as the
    # first `share` or `use` would: the README's first step works before anything else was run.
    identity = _identity()
    print(identity.id_string)
    if args.fingerprint:
        print(fingerprint(identity.public_id))
    return 0


def authorize(args: argparse.Namespace) -> int:
    public_id = parse_id(args.id)
    parse_ports_spec(args.ports)
    expires = parse_expiry(args.expires) if args.expires else None
    clients = AuthorizedClients()
    entry = clients.add(
        public_id,
        name=args.name,
        ports_spec=args.ports,
        expires=expires,
        name_taken="replace" if args.replace else "refuse",
    )
    _report_problems(clients)
    for gone in clients.displaced:
        print(
            f"meshserial: revoked {gone.id_string}, which had the name {escape(gone.name or '')!r}",
            file=sys.stderr,
        )
    print(entry.to_line())
    return 0


def _report_problems(clients: AuthorizedClients) -> None:
    """Lines of the file that grant nothing because they do not parse (left as they are)."""
    for problem in clients.problems:
        print(f"meshserial: warning: {escape(problem)}; line ignored", file=sys.stderr)


def revoke(args: argparse.Namespace) -> int:
    clients = AuthorizedClients()
    gone = clients.remove(args.who, every=args.every)
    _report_problems(clients)
    if not gone:
        raise UsageError(f"no authorized client matches {args.who!r}")
    for entry in gone:
        print(f"revoked {entry.id_string}" + (f" ({escape(entry.name)})" if entry.name else ""))
    return 0


def trust(args: argparse.Namespace) -> int:
    public_id = parse_id(args.id)
    result = KnownServers().load().pin(args.name, public_id, replace=args.replace)
    print(f"{result}: {args.name} {format_id(public_id)}")
    return 0


# ------------------------------------------------------------------------------------------ invite


def invite(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl)
    host, port = _listen_setting(args.config, args.port)
    if args.address:
        hints = [format_hostport(*parse_hostport(a, default_port=port)) for a in args.address]
    elif host not in _WILDCARDS:
        hints = [format_hostport(host, port)]  # share listens on one address only
    else:
        hints = _own_addresses(port, args.interfaces)
    identity = _identity()
    code = create_invite(identity, ports_spec=args.ports, ttl_seconds=ttl, hints=hints, name=args.name)
    print(code, flush=True)
    print(f"meshserial: the code sends clients to {', '.join(hints)}", file=sys.stderr)
    print(
        f"meshserial: valid for {args.ttl}, once; on the client, run 'meshserial accept' and paste the "
        "code at its prompt (it is not shown)",
        file=sys.stderr,
    )
    return 0


def _listen_setting(config_path: Path | None, port: int | None) -> tuple[str, int]:
    """Where ``share`` listens, as it would work it out: ``MESHSERIAL_LISTEN``, else ``listen`` in the
    config file's ``[share]``, else every interface on the default port; ``port`` overrides the port."""
    text = os.environ.get("MESHSERIAL_LISTEN", "").strip()
    where = "MESHSERIAL_LISTEN"
    if not text:
        loaded = config.load(config_path)
        text = str(loaded.share.get("listen", ""))
        where = f"config file {loaded.path} [share] listen"
    host, listen_port = "0.0.0.0", DEFAULT_PORT
    if text:
        try:
            host, listen_port = parse_hostport(text, default_port=DEFAULT_PORT)
        except UsageError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return host, port or listen_port


def _own_addresses(port: int, patterns: list[str] | None) -> list[str]:
    interfaces = list_interfaces(zerotier=False)
    if patterns:
        interfaces = select_interfaces(patterns, available=interfaces)
    hints, left_out = invite_addresses(port, interfaces, socket.gethostname(), chosen=bool(patterns))
    if not hints:
        raise UsageError(
            "this machine has no address another machine could reach (no interface up but loopback): "
            "give --address HOST[:PORT]"
        )
    if left_out:
        print(
            f"meshserial: {left_out} more address{'es' if left_out > 1 else ''} left out of the code; "
            "choose with --interface or --address",
            file=sys.stderr,
        )
    return hints


def invite_addresses(
    port: int, interfaces: Sequence[Interface], hostname: str, *, chosen: bool = False
) -> tuple[list[str], int]:
    """The hints for a code: up to :data:`MAX_INVITE_ADDRESSES` addresses of ``interfaces`` on
    ``port``, then ``HOSTNAME.local``; and how many addresses did not fit.

    Interfaces count when they are up, and, unless the user ``chosen`` them (``--interface``), when
    they lead to other machines: not loopback, not container bridges (docker0's address means
    nothing elsewhere). IPv4 before IPv6 (shorter, and what LANs and ZeroTier route), LAN before
    ZeroTier; ``accept`` puts the ones on its own networks first anyway. Link-local addresses are
    left out: an IPv6 one needs a scope that names an interface of *this* machine, and 169.254/16
    is more often a DHCP failure than a network. ``HOSTNAME.local`` (mDNS, answered by avahi on the
    server) comes last, when there is an address at all: it survives address changes.
    """
    usable = [
        i for i in interfaces if i.is_up and (chosen or not (i.is_loopback or is_container_plumbing(i.name)))
    ]
    ipv4: list[str] = []
    ipv6: list[str] = []
    for iface in sorted(usable, key=lambda i: i.overlay is not None):  # stable: LAN, then overlays
        for text in iface.addresses:
            try:
                ip = ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                continue
            if ip.is_link_local or ip.is_unspecified or (ip.is_loopback and not chosen):
                continue
            (ipv4 if ip.version == 4 else ipv6).append(format_hostport(str(ip), port))
    found = list(dict.fromkeys(ipv4 + ipv6))
    hints = found[:MAX_INVITE_ADDRESSES]
    label = hostname.partition(".")[0]
    if hints and _DNS_LABEL.fullmatch(label) and label.lower() != "localhost":
        hints.append(f"{label}.local:{port}")
    return hints, len(found) - min(len(found), MAX_INVITE_ADDRESSES)


# ------------------------------------------------------------------------------------------ accept


def read_code(given: str, stdin: TextIO | None = None) -> str:
    """The invite code: ``given``, unless that is ``-``; then asked for without echo when standard
    input is a terminal, else read from it (one word, blank lines and spaces around it allowed)."""
    if given != "-":
        return given
    stream = sys.stdin if stdin is None else stdin
    try:
        if stream is None:  # started with standard input closed
            text = ""
        elif stream.isatty():
            text = getpass.getpass("invite code (msinv1…, not shown): ")
        else:
            text = stream.read(MAX_CODE_INPUT + 1)
    except EOFError:
        text = ""
    except (UnicodeDecodeError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read the invite code from standard input: {exc}") from None
    words = text.split()
    if len(text) > MAX_CODE_INPUT or len(words) > 1:
        raise UsageError("standard input holds more than one invite code")
    if not words:
        raise UsageError(
            "no invite code: paste it at the prompt, pipe it in (… | meshserial accept), "
            "or give it as an argument"
        )
    return words[0]


def accept(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    code = parse_invite(read_code(args.code))
    addresses = [args.address] if args.address else list(code.hints)
    if not addresses:
        raise UsageError("the invite holds no address: give --address HOST[:PORT]")
    targets = [parse_hostport(address, default_port=DEFAULT_PORT) for address in addresses]
    # Our host name, as a suggestion: the server cleans it again, may have a name of its own for
    # us (invite --name), and adds -2 if another key has it.
    return _accept(code, targets, args.name, clean_client_name(socket.gethostname()))


async def _accept(
    code: InviteCode, targets: list[tuple[str, int]], name: str | None, client_name: str | None
) -> int:
    identity = _identity()
    timeout = SINGLE_ADDRESS_TIMEOUT
    if len(targets) > 1:
        timeout = PER_ADDRESS_TIMEOUT
        # Addresses on a network we are on first: a client across ZeroTier tries the server's
        # ZeroTier address before the LAN ones it cannot reach. sorted() keeps the code's order
        # otherwise.
        interfaces = await asyncio.to_thread(list_interfaces, zerotier=False)
        targets = sorted(targets, key=lambda t: address_rank(format_hostport(*t), interfaces))
    last: MeshserialError | None = None
    for n, (host, port) in enumerate(targets, 1):
        label = name or server_label(host, port)
        where = escape(format_hostport(host, port))

        async def check(presented: bytes, label: str = label) -> None:
            if presented != code.server_id:
                raise HandshakeError(f"{escape(label)} is not the server that issued the invite")
            # The invite vouches for this key: pin it (a different existing pin is still refused).
            KnownServers().load().pin(label, code.server_id, via="invite")

        def redeem(handshake_hash: bytes) -> sess.Message:
            proof = invite_proof(code.secret, handshake_hash).hex()
            return sess.Redeem(invite=code.invite_id.hex(), proof=proof, name=client_name)

        try:
            conn, answer = await connect_secure(
                host, port, identity=identity, request=redeem, trust=check, stream_for=None, timeout=timeout
            )
        except AuthError:
            # The server answered and said no (invite used, expired or rate-limited), or a pin is in
            # the way: another address of the same server would only say it again.
            raise
        except MeshserialError as exc:
            last = exc
            if n < len(targets):
                print(f"meshserial: {where}: {escape(str(exc))}; trying the next address", file=sys.stderr)
            continue
        conn.close()
        assert isinstance(answer, sess.Paired)
        print(f"paired with {escape(label)} ({format_id(code.server_id)}); rights: {escape(answer.ports)}")
        return 0
    assert last is not None
    if len(targets) == 1:
        raise last
    raise ConnectError(
        f"the server answered at none of the {len(targets)} addresses in the invite; "
        "give --address HOST[:PORT]"
    ) from last
