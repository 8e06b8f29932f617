"""``meshserial share``."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from meshserial.cli.options import add_line_settings, hostport, line_settings, seconds
from meshserial.errors import UsageError
from meshserial.net.secure import DEFAULT_KEEPALIVE, HANDSHAKE_TIMEOUT
from meshserial.net.sharing import SCROLLBACK_BYTES
from meshserial.net.tcp import DEFAULT_PORT
from meshserial.ports.factory import default_name
from meshserial.server import DEFAULT_DETACH_TIMEOUT, DeviceConfig, ShareConfig, run_share

HELP = "serve local serial ports (a device path, or sim:echo / sim:nmea)"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("share", help=HELP, description=HELP, parents=[common])
    parser.add_argument(
        "devices",
        nargs="+",
        metavar="DEVICE[=NAME]",
        help="device path (/dev/ttyUSB0, /dev/serial/by-id/…) or sim:echo / sim:nmea, "
        "optionally with a port name",
    )
    parser.add_argument("--name", help="port name when sharing one device (default: from the device)")
    parser.add_argument(
        "--listen",
        type=hostport(DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"encrypted, authenticated service address (default 0.0.0.0:{DEFAULT_PORT}, unless only "
        "--rfc2217 is given)",
    )
    parser.add_argument(
        "--rfc2217",
        type=hostport(None),
        metavar="HOST:PORT",
        help="serve plain RFC 2217 (unauthenticated!) on HOST:PORT; several devices take consecutive ports",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for a device that does not exist yet instead of failing"
    )
    add_line_settings(parser, default_baud=9600)
    session = parser.add_argument_group("sessions")
    session.add_argument(
        "--keepalive",
        type=seconds,
        default=DEFAULT_KEEPALIVE,
        metavar="S",
        help=f"drop a connection after S seconds of silence (default {DEFAULT_KEEPALIVE:g})",
    )
    session.add_argument(
        "--detach-timeout",
        type=seconds,
        default=DEFAULT_DETACH_TIMEOUT,
        metavar="S",
        help="keep a session whose connection dropped this long for its client to resume it "
        f"(default {DEFAULT_DETACH_TIMEOUT:g})",
    )
    session.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=HANDSHAKE_TIMEOUT,
        metavar="S",
        help=f"close connections that have not completed the handshake by then "
        f"(default {HANDSHAKE_TIMEOUT:g})",
    )
    session.add_argument(
        "--scrollback-size",
        type=int,
        default=SCROLLBACK_BYTES,
        metavar="BYTES",
        help=f"recent device output kept per port for use --scrollback (default {SCROLLBACK_BYTES})",
    )
    parser.set_defaults(func=run)


def parse_devices(items: list[str], name: str | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in items:
        spec, sep, port_name = item.partition("=")
        if not spec:
            raise UsageError(f"bad device {item!r}")
        if sep and not port_name:
            raise UsageError(f"bad device {item!r}: empty name after '='")
        out.append((spec, port_name or default_name(spec)))
    if name is not None:
        if len(out) != 1:
            raise UsageError("--name works with one device; use DEVICE=NAME for several")
        out[0] = (out[0][0], name)
    return out


def run(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    settings = line_settings(args, always=True)
    assert settings is not None
    devices = tuple(
        DeviceConfig(spec=spec, name=port_name, settings=settings)
        for spec, port_name in parse_devices(args.devices, args.name)
    )
    listen = args.listen
    if listen is None and args.rfc2217 is None:
        listen = ("0.0.0.0", DEFAULT_PORT)
    config = ShareConfig(
        devices=devices,
        listen=listen,
        rfc2217=args.rfc2217,
        wait_for_device=args.wait,
        keepalive=args.keepalive,
        detach_timeout=args.detach_timeout,
        handshake_timeout=args.handshake_timeout,
        scrollback=args.scrollback_size,
    )
    return run_share(config)
