"""Identity and trust commands: ``keygen``, ``id``, ``authorize``, ``revoke``, ``trust``, ``invite``,
``accept``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Coroutine
from typing import Any

from meshserial.client import connect_secure
from meshserial.errors import HandshakeError, MeshserialError, UsageError
from meshserial.finder import server_label
from meshserial.invites import create_invite, invite_proof, parse_invite
from meshserial.keys import create_identity, fingerprint, format_id, load_identity, parse_id
from meshserial.net.tcp import DEFAULT_PORT, parse_hostport
from meshserial.proto import session as sess
from meshserial.server import load_identity_noting
from meshserial.trust import AuthorizedClients, KnownServers, parse_duration, parse_expiry, parse_ports_spec


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
        description="Print this machine's public identity, to give to the other side.",
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
    p.add_argument("--name", help="a name for the client (shown as the port holder)")
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
        description="Create a one-time code that pairs a client with this server.",
    )
    p.add_argument("--ports", default="*=rw", metavar="SPEC", help="rights the code grants (default *=rw)")
    p.add_argument("--ttl", default="15m", help="how long the code stays valid (default 15m)")
    p.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where clients reach this server (repeatable; stored in the code)",
    )
    p.set_defaults(func=invite)

    p = sub.add_parser(
        "accept",
        parents=[common],
        help="pair with a server using its invite code",
        description="Redeem an invite: pin the server and get this machine authorized.",
    )
    p.add_argument("code", metavar="CODE", help="the msinv1… code")
    p.add_argument("--address", metavar="HOST:PORT", help="server address (default: from the code)")
    p.add_argument("--name", help="name to pin the server under (default: its host)")
    p.set_defaults(func=accept)


def keygen(args: argparse.Namespace) -> int:
    identity = create_identity()
    print(identity.id_string)
    return 0


def show_id(args: argparse.Namespace) -> int:
    identity = load_identity()
    print(identity.id_string)
    if args.fingerprint:
        print(fingerprint(identity.public_id))
    return 0


def authorize(args: argparse.Namespace) -> int:
    public_id = parse_id(args.id)
    parse_ports_spec(args.ports)
    expires = parse_expiry(args.expires) if args.expires else None
    clients = AuthorizedClients()
    entry = clients.add(public_id, name=args.name, ports_spec=args.ports, expires=expires)
    _report_problems(clients)
    print(entry.to_line())
    return 0


def _report_problems(clients: AuthorizedClients) -> None:
    """Lines of the file that grant nothing because they do not parse (left as they are)."""
    for problem in clients.problems:
        print(f"meshserial: warning: {problem}; line ignored", file=sys.stderr)


def revoke(args: argparse.Namespace) -> int:
    clients = AuthorizedClients()
    gone = clients.remove(args.who)
    _report_problems(clients)
    if not gone:
        raise UsageError(f"no authorized client matches {args.who!r}")
    for entry in gone:
        print(f"revoked {entry.id_string}" + (f" ({entry.name})" if entry.name else ""))
    return 0


def trust(args: argparse.Namespace) -> int:
    public_id = parse_id(args.id)
    result = KnownServers().load().pin(args.name, public_id, replace=args.replace)
    print(f"{result}: {args.name} {format_id(public_id)}")
    return 0


def invite(args: argparse.Namespace) -> int:
    identity = load_identity_noting()
    for address in args.address:
        parse_hostport(address, default_port=DEFAULT_PORT)
    code = create_invite(
        identity, ports_spec=args.ports, ttl_seconds=parse_duration(args.ttl), hints=args.address
    )
    print(code)
    print(
        f"meshserial: valid for {args.ttl}, once; on the client run: meshserial accept {code}",
        file=sys.stderr,
    )
    return 0


def accept(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    code = parse_invite(args.code)
    addresses = [args.address] if args.address else list(code.hints)
    if not addresses:
        raise UsageError("the invite holds no address: give --address HOST:PORT")
    return _accept(code.server_id, code.invite_id, code.secret, addresses, args.name)


async def _accept(
    server_id: bytes, invite_id: bytes, secret: bytes, addresses: list[str], name: str | None
) -> int:
    identity = load_identity_noting()
    last: MeshserialError | None = None
    for address in addresses:
        host, port = parse_hostport(address, default_port=DEFAULT_PORT)
        label = name or server_label(host, port)

        async def check(presented: bytes, label: str = label) -> None:
            if presented != server_id:
                raise HandshakeError(f"{label} is not the server that issued the invite")
            # The invite vouches for this key: pin it (a different existing pin is still refused).
            KnownServers().load().pin(label, server_id, via="invite")

        def redeem(handshake_hash: bytes) -> sess.Message:
            return sess.Redeem(invite=invite_id.hex(), proof=invite_proof(secret, handshake_hash).hex())

        try:
            conn, answer = await connect_secure(
                host, port, identity=identity, request=redeem, trust=check, stream_for=None
            )
        except MeshserialError as exc:
            last = exc
            continue
        conn.close()
        assert isinstance(answer, sess.Paired)
        print(f"paired with {label} ({format_id(server_id)}); rights: {answer.ports}")
        return 0
    assert last is not None
    raise last
