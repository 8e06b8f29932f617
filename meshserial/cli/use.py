"""``meshserial use``."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from meshserial.cli.options import (
    add_discovery_options,
    add_line_settings,
    find_options,
    line_settings,
    listen_address,
    on_off,
    seconds,
    terminal_voice,
)
from meshserial.client import ConnectOptions, TrustOptions, Upstream, UseOptions, parse_target, run_pty
from meshserial.errors import UsageError
from meshserial.finder import FindOptions
from meshserial.gateway import DEFAULT_LINGER, GatewayOptions, run_gateway
from meshserial.net.link import LinkOptions
from meshserial.net.secure import DEFAULT_KEEPALIVE

HELP = "use a remote serial port as a local virtual port or a local RFC 2217 endpoint"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("use", help=HELP, description=HELP, parents=[common])
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="NAME (a port found by discovery: mDNS, then --rendezvous), NAME@HOST[:PORT] (a meshserial "
        "server) or rfc2217://HOST:PORT (any RFC 2217 server)",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pty", action="store_true", help="create a local virtual serial port (PTY)")
    mode.add_argument(
        "--listen",
        type=listen_address("127.0.0.1"),
        metavar="HOST:PORT",
        help="serve the port as plain RFC 2217 on HOST:PORT (for pyserial, esptool, hub4com); a bare "
        "PORT listens on 127.0.0.1 only, since the endpoint is unauthenticated (0.0.0.0:PORT for every "
        "interface)",
    )
    parser.add_argument(
        "--link",
        type=Path,
        metavar="PATH",
        help="stable path (symlink) for the PTY (default: $XDG_RUNTIME_DIR/meshserial/NAME)",
    )
    add_line_settings(parser, default_baud=None)
    parser.add_argument("--dtr", type=on_off, metavar="on|off", help="set DTR once connected")
    parser.add_argument("--rts", type=on_off, metavar="on|off", help="set RTS once connected")
    parser.add_argument(
        "--dtr-follows-open",
        action="store_true",
        help="raise DTR/RTS when an application opens the PTY and drop them when it closes",
    )
    parser.add_argument(
        "--trust-new",
        action="store_true",
        help="trust and pin a server seen for the first time (a changed key is still refused)",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="watch the port: receive its output, send nothing, change no setting",
    )
    session = parser.add_argument_group("session")
    session.add_argument(
        "--keepalive",
        type=seconds,
        default=DEFAULT_KEEPALIVE,
        metavar="S",
        help=f"declare the connection dead after S seconds of silence (default {DEFAULT_KEEPALIVE:g})",
    )
    session.add_argument(
        "--no-reconnect",
        action="store_true",
        help="end when the connection is lost instead of reconnecting and resuming",
    )
    session.add_argument(
        "--takeover",
        action="store_true",
        help="replace a stale read-write session of this same identity on the port",
    )
    session.add_argument(
        "--linger",
        type=seconds,
        default=DEFAULT_LINGER,
        metavar="S",
        help="with --listen: the remote port is opened when a local client connects and closed S "
        "seconds after the last one leaves, so a tool that closes and reopens it keeps it "
        f"(default {DEFAULT_LINGER:g})",
    )
    session.add_argument(
        "--scrollback",
        type=seconds,
        default=0.0,
        metavar="DURATION",
        help="first replay the device output of the last DURATION (e.g. 30s, 2m) kept by the server",
    )
    add_discovery_options(parser, timeout=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    target = parse_target(args.target)
    options = UseOptions(
        settings=line_settings(args, always=False),
        dtr=args.dtr,
        rts=args.rts,
        link_options=LinkOptions(dtr_follows_open=args.dtr_follows_open),
        connect=ConnectOptions(
            read_only=args.read_only,
            trust=TrustOptions(trust_new=args.trust_new),
            voice=terminal_voice(questions=True),
            keepalive=args.keepalive,
            reconnect=not args.no_reconnect,
            takeover=args.takeover,
            scrollback=args.scrollback,
            find=find_options(args) if target.kind == "discover" else FindOptions(),
        ),
    )
    if args.link is not None and not args.pty:
        raise UsageError("--link goes with --pty")
    if args.pty:
        return run_pty(target, link=args.link, options=options)
    gateway = GatewayOptions(listen=args.listen, linger=args.linger)
    return run_gateway(Upstream(target, options.connect), options, gateway)
