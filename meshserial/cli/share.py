"""``meshserial share``."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from meshserial import config
from meshserial.addresses import DEFAULT_PORT
from meshserial.advertise import PublishConfig
from meshserial.cli.options import (
    add_config_option,
    add_line_settings,
    line_settings,
    listen_address,
    seconds,
    terminal_voice,
)
from meshserial.errors import UsageError
from meshserial.net.secure import DEFAULT_KEEPALIVE, HANDSHAKE_TIMEOUT
from meshserial.net.sharing import SCROLLBACK_BYTES
from meshserial.ports.factory import default_name
from meshserial.proto.text import PORT_NAME_RULE, check_port_name
from meshserial.server import DEFAULT_DETACH_TIMEOUT, DeviceConfig, ShareConfig, run_share

HELP = "serve local serial ports (a device path, or sim:echo / sim:nmea)"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("share", help=HELP, description=HELP, parents=[common])
    parser.add_argument(
        "devices",
        nargs="*",
        metavar="DEVICE[=NAME]",
        help="device path (/dev/ttyUSB0, /dev/serial/by-id/…) or sim:echo / sim:nmea, "
        "optionally with a port name (or 'devices' in the config file)",
    )
    parser.add_argument(
        "--name", help=f"port name when sharing one device (default: from the device); {PORT_NAME_RULE}"
    )
    parser.add_argument(
        "--listen",
        type=listen_address("0.0.0.0", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"encrypted, authenticated service address (default 0.0.0.0:{DEFAULT_PORT}, unless only "
        "--rfc2217 is given); a bare PORT listens on every interface, like the default",
    )
    parser.add_argument(
        "--rfc2217",
        type=listen_address("127.0.0.1"),
        metavar="HOST:PORT",
        help="serve plain RFC 2217 (unauthenticated!) on HOST:PORT; several devices take consecutive ports. "
        "A bare PORT listens on 127.0.0.1 only, since anyone who reaches it can use the device: write "
        "0.0.0.0:PORT (or :PORT) for every interface",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait for a device that does not exist yet instead of failing"
    )
    add_line_settings(parser, default_baud=None, shown_default=config.DEFAULT_BAUD)
    found = parser.add_argument_group("discovery")
    found.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="NAME|GLOB",
        help="advertise by mDNS on these interfaces only (repeatable; e.g. 'zt*', eth0; default: every up, "
        "non-loopback, multicast interface, or loopback when --listen is on loopback)",
    )
    found.add_argument("--no-mdns", action="store_true", help="do not advertise by mDNS")
    found.add_argument(
        "--rendezvous", metavar="URL", help="register the ports with this rendezvous service (http[s]://…)"
    )
    found.add_argument(
        "--rendezvous-token-file",
        type=Path,
        metavar="FILE",
        help="bearer token the rendezvous wants for registering (file mode 0600)",
    )
    add_config_option(parser)
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
    """``(spec, port name)`` for each ``DEVICE[=NAME]`` (from the command line or the config file).

    A name given by the user must be usable (:func:`~meshserial.proto.text.check_port_name`): it is
    refused here, at the source, rather than shared under a name nobody could ``use``.
    """
    out: list[tuple[str, str]] = []
    for item in items:
        spec, sep, port_name = item.partition("=")
        if not spec:
            raise UsageError(f"bad device {item!r}")
        if sep and not port_name:
            raise UsageError(f"bad device {item!r}: empty name after '='")
        out.append((spec, check_port_name(port_name) if sep else default_name(spec)))
    if name is not None:
        if len(out) != 1:
            raise UsageError("--name works with one device; use DEVICE=NAME for several")
        out[0] = (out[0][0], check_port_name(name))
    return out


def run(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    cli = {
        key: getattr(args, key)
        for key in (
            "devices", "listen", "rfc2217", "baud", "wait", "interfaces", "no_mdns", "rendezvous",
            "rendezvous_token_file",
        )
    }  # fmt: skip
    chosen = config.share_settings(cli, config.load(args.config))
    settings = line_settings(args, always=True)
    assert settings is not None
    settings = settings.with_changes(baudrate=chosen.baud)
    devices = tuple(
        DeviceConfig(spec=spec, name=port_name, settings=settings)
        for spec, port_name in parse_devices(list(chosen.devices), args.name)
    )
    token = None
    if chosen.rendezvous_token_file is not None:
        token = config.read_token(chosen.rendezvous_token_file)
    share_config = ShareConfig(
        devices=devices,
        listen=chosen.listen,
        rfc2217=chosen.rfc2217,
        wait_for_device=chosen.wait,
        keepalive=args.keepalive,
        detach_timeout=args.detach_timeout,
        handshake_timeout=args.handshake_timeout,
        scrollback=args.scrollback_size,
        publish=PublishConfig(
            mdns=chosen.mdns,
            interfaces=chosen.interfaces,
            rendezvous=chosen.rendezvous,
            rendezvous_token=token,
        ),
    )
    return run_share(share_config, terminal_voice())
