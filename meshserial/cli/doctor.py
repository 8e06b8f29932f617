"""``meshserial doctor``: look at interfaces, mDNS, keys, trust files and serial devices; suggest fixes.

Each check ends as ``ok``, ``info``, ``warning`` or ``problem``. A warning is something the user should
act on (a group membership, a line of ``authorized_clients`` that is ignored), so warnings and problems
both make the exit status 1 and neither run ends in "all good"; ``info`` is for what is merely worth
knowing.

Serial devices are looked for where Linux puts them: USB adapters (``ttyUSB*``, ``ttyACM*``), the
on-board UARTs of ARM boards (``ttyAMA*``; ``serial0``/``serial1`` on a Raspberry Pi are links to the
one in use) and PC serial ports (``ttyS*``). Aliases (those links, ``/dev/serial/by-id``) are shown
beside the device they point to rather than as devices of their own. The kernel makes 4 to 32
``ttyS*`` nodes whether or not a UART is behind them; only those whose ``/sys/class/tty/*/type`` names
a UART (``0`` is "unknown": none found) are listed, the rest summed up in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import grp
import json
import os
import pwd
import stat
import sys
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from meshserial import config, paths
from meshserial.cli.options import add_config_option
from meshserial.discovery import mdns
from meshserial.discovery.overlay import Interface, list_interfaces, read_zerotier_token, select_interfaces
from meshserial.errors import MeshserialError
from meshserial.keys import identity_path, load_identity
from meshserial.proto.text import escape
from meshserial.trust import AuthorizedClients, KnownServers

HELP = "check interfaces, mDNS, keys, trust files and serial-device permissions"
Status = Literal["ok", "info", "warning", "problem"]
SERIAL_GLOBS = ("ttyUSB*", "ttyACM*", "ttyAMA*")  # in /dev: each one a real device when it exists
LEGACY_GLOB = "ttyS*"  # in /dev: mostly placeholders, see the module docstring
ALIAS_GLOBS = ("serial0", "serial1", "serial/by-id/*")  # in /dev: links to the devices above


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    area: str
    status: Status
    detail: str
    fix: str | None = None


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("doctor", help=HELP, description=HELP + ".", parents=[common])
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="NAME|GLOB",
        help="check mDNS on these interfaces (default: the ones share and list would use)",
    )
    add_config_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    return doctor(args.interfaces, args.config, as_json=args.json)


async def doctor(patterns: list[str] | None, config_path: Path | None, *, as_json: bool) -> int:
    checks: list[Check] = []
    interfaces = await asyncio.to_thread(list_interfaces)
    checks += interface_checks(interfaces)
    checks += await mdns_checks(interfaces, patterns)
    checks += key_checks()
    checks += config_checks(config_path)
    checks += serial_checks()
    summary, code = summarize(checks)
    if as_json:
        print(json.dumps({"ok": code == 0, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(report(checks))
        print(f"\n{summary}")
    sys.stdout.flush()
    return code


def summarize(checks: list[Check]) -> tuple[str, int]:
    """The last line of the report and the exit status: 0 and "all good" only without warnings and
    problems."""
    counts = [(sum(c.status == status for c in checks), status) for status in ("warning", "problem")]
    said = [f"{n} {status}{'s' if n != 1 else ''}" for n, status in counts if n]
    return (", ".join(said) + " found", 1) if said else ("all good", 0)


def report(checks: list[Check]) -> str:
    lines: list[str] = []
    area = None
    for check in checks:
        if check.area != area:
            area = check.area
            lines.append(("" if not lines else "\n") + area)
        lines.append(f"  {check.status:<8} {check.detail}")
        if check.fix:
            lines.append(f"  {'':<8} fix: {check.fix}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- network


def interface_checks(interfaces: list[Interface]) -> list[Check]:
    out: list[Check] = []
    default = {i.name for i in select_interfaces(None, available=interfaces)}
    for iface in interfaces:
        if iface.is_loopback:
            continue
        kind = "ZeroTier" if iface.overlay == "zerotier" else "LAN"
        if iface.network_name or iface.network_id:
            kind += f" network {iface.network_name or ''} {iface.network_id or ''}".rstrip()
        addresses = ", ".join(iface.ipv4) or "no IPv4 address"
        detail = f"{iface.name}: {addresses} ({kind})"
        if iface.name in default:
            out.append(Check(area="interfaces", status="ok", detail=detail + "; mDNS by default"))
        elif not iface.is_up:
            out.append(Check(area="interfaces", status="info", detail=detail + "; down"))
        elif not iface.multicast:
            fix = (
                "allow multicast on the ZeroTier network (multicastLimit > 0), see docs/zerotier.md"
                if iface.overlay
                else "mDNS cannot cross it (WireGuard, Tailscale …): use a rendezvous (docs/rendezvous.md)"
            )
            status: Status = "warning" if iface.overlay else "info"
            out.append(Check(area="interfaces", status=status, detail=detail + "; no multicast", fix=fix))
        else:
            out.append(Check(area="interfaces", status="info", detail=detail + "; not used by default"))
    if not default:
        out.append(
            Check(
                area="interfaces",
                status="warning",
                detail="no interface is up with IPv4 and multicast: mDNS finds nothing by default",
                fix="connect a network, pick one with --interface, or use a rendezvous",
            )
        )
    if any(i.overlay == "zerotier" for i in interfaces) and read_zerotier_token() is None:
        out.append(
            Check(
                area="interfaces",
                status="info",
                detail="ZeroTier network names unknown: the ZeroTier API token is not readable",
                fix="sudo install -m 600 -o $USER /var/lib/zerotier-one/authtoken.secret "
                "~/.zeroTierOneAuthToken",
            )
        )
    return out


async def mdns_checks(interfaces: list[Interface], patterns: list[str] | None) -> list[Check]:
    try:
        chosen = select_interfaces(patterns, available=interfaces)
    except MeshserialError as exc:
        return [Check(area="mdns", status="problem", detail=str(exc), fix="give a pattern that matches")]
    results = await asyncio.gather(*(mdns.check_interface(i) for i in chosen))
    out: list[Check] = []
    for iface, error in zip(chosen, results, strict=True):
        if error is None:
            out.append(Check(area="mdns", status="ok", detail=f"{iface.label}: mDNS responder starts"))
        else:
            out.append(
                Check(
                    area="mdns",
                    status="problem",
                    detail=f"{iface.label}: {error}",
                    fix="make sure UDP port 5353 is usable (firewall, another mDNS stack) and the interface "
                    "is up with an IPv4 address and the MULTICAST flag",
                )
            )
    return out


# -------------------------------------------------------------------------------------------- keys


def key_checks() -> list[Check]:
    out: list[Check] = []
    path = identity_path()
    for directory in dict.fromkeys((path.parent, paths.config_dir())):
        try:
            mode = directory.stat().st_mode
        except OSError:
            continue
        if mode & 0o022:
            out.append(
                Check(
                    area="keys",
                    status="problem",
                    detail=f"{directory} is writable by other users (mode {stat.S_IMODE(mode):04o})",
                    fix=f"chmod go-w {directory}",
                )
            )
    if not path.exists():
        out.append(
            Check(
                area="keys",
                status="info",
                detail=f"no identity yet at {path}",
                fix="it is created on first 'share'/'use', or now with 'meshserial keygen'",
            )
        )
    else:
        try:
            identity = load_identity(path)
        except MeshserialError as exc:
            out.append(_failed("keys", exc))
        else:
            out.append(
                Check(area="keys", status="ok", detail=f"identity {identity.id_string} ({path}, private)")
            )
    clients = AuthorizedClients()
    loaders: tuple[tuple[str, Callable[[], int]], ...] = (
        ("authorized clients", lambda: len(clients.load().entries)),
        ("pinned servers", lambda: len(KnownServers().load().entries)),
    )
    for what, loader in loaders:
        try:
            count = loader()
        except MeshserialError as exc:
            out.append(_failed("trust", exc))
        else:
            out.append(Check(area="trust", status="ok", detail=f"{count} {what}"))
    # A line that does not parse grants nothing (the server skips it, see meshserial.trust): not a
    # security problem, but someone meant it to let a client in.
    for problem in clients.problems:
        out.append(
            Check(
                area="trust",
                status="warning",
                detail=f"{problem}; line ignored",
                fix="correct the line, or remove it",
            )
        )
    return out


def _failed(area: str, exc: MeshserialError) -> Check:
    text = str(exc)
    detail, sep, fix = text.partition("; fix it with: ")
    return Check(
        area=area, status="problem", detail=detail, fix=fix if sep else "correct the file named above"
    )


def config_checks(path: Path | None) -> list[Check]:
    try:
        loaded = config.load(path)
    except MeshserialError as exc:
        return [Check(area="config", status="problem", detail=str(exc), fix="correct the file")]
    if loaded.path is None:
        return [Check(area="config", status="info", detail="no config file (flags and defaults only)")]
    return [Check(area="config", status="ok", detail=f"config file {loaded.path} reads fine")]


# ----------------------------------------------------------------------------------- serial devices


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _member_in_db(user: str, group: str) -> bool:
    """Whether /etc/group (or NSS) lists ``user`` in ``group``, even if this login session predates it."""
    try:
        entry = grp.getgrnam(group)
        primary = pwd.getpwnam(user).pw_gid
    except KeyError:
        return False
    return user in entry.gr_mem or primary == entry.gr_gid


def serial_devices(
    dev: Path = Path("/dev"), sys_tty: Path = Path("/sys/class/tty")
) -> tuple[dict[str, list[str]], int]:
    """The serial devices worth checking, each with its aliases (``serial0``, by-id links), and how
    many ``ttyS*`` nodes were left out as placeholders without a UART."""
    found: dict[str, list[str]] = {}
    # Real paths throughout, so that an alias finds the entry of the device it points to.
    for pattern in SERIAL_GLOBS:
        for path in glob.glob(str(dev / pattern)):
            found.setdefault(os.path.realpath(path), [])
    legacy = 0
    for path in glob.glob(str(dev / LEGACY_GLOB)):
        if _has_uart(sys_tty / Path(path).name):
            found.setdefault(os.path.realpath(path), [])
        else:
            legacy += 1
    for pattern in ALIAS_GLOBS:
        for alias in glob.glob(str(dev / pattern)):
            target = os.path.realpath(alias)
            if target == alias or not os.path.exists(target):
                continue  # not a link, or a dangling one (the device is unplugged)
            if target not in found and Path(target).name.startswith("ttyS"):
                legacy -= 1  # counted as a placeholder, but serial0 (a Pi's mini UART) points at it
            found.setdefault(target, []).append(alias)
    return {path: found[path] for path in sorted(found)}, max(legacy, 0)


def _has_uart(sysfs: Path) -> bool:
    """Whether the kernel found a UART behind a ``ttyS*`` node (its ``type`` is not 0, "unknown")."""
    try:
        return int((sysfs / "type").read_text(encoding="ascii").strip()) != 0
    except (OSError, ValueError):
        return False  # no sysfs entry: nothing registered a port there


def serial_checks(dev: Path = Path("/dev"), sys_tty: Path = Path("/sys/class/tty")) -> list[Check]:
    out: list[Check] = []
    user = _user()
    root = os.geteuid() == 0
    groups = set(os.getgroups()) | {os.getegid()}
    devices, legacy = serial_devices(dev, sys_tty)
    if root:
        out.append(Check(area="serial", status="ok", detail="running as root: every device can be opened"))
    else:
        try:
            dialout = grp.getgrnam("dialout").gr_gid
        except KeyError:
            dialout = None
        if dialout is not None and dialout not in groups:
            in_db = _member_in_db(user, "dialout")
            out.append(
                Check(
                    area="serial",
                    status="warning",
                    detail=f"{user} is not in the 'dialout' group (the usual owner of serial devices)"
                    + (" in this session" if in_db else ""),
                    fix="log out and back in (or run 'newgrp dialout')"
                    if in_db
                    else f"sudo usermod -aG dialout {user}, then log out and back in",
                )
            )
        elif dialout is not None:
            out.append(Check(area="serial", status="ok", detail=f"{user} is in the 'dialout' group"))
    for device, aliases in devices.items():
        try:
            st = os.stat(device)
        except OSError:
            continue
        # by-id names are the udev's, built from what the USB device reports: escaped like a peer's text.
        shown = device + (f" ({', '.join(escape(a) for a in aliases)})" if aliases else "")
        group = _group_name(st.st_gid)
        if os.access(device, os.R_OK | os.W_OK):
            out.append(Check(area="serial", status="ok", detail=f"{shown} can be opened (group {group})"))
        else:
            fix = (
                "log out and back in (or run 'newgrp " + group + "')"
                if _member_in_db(user, group)
                else f"sudo usermod -aG {group} {user}, then log out and back in"
            )
            mode = stat.S_IMODE(st.st_mode)
            detail = f"{shown} cannot be opened by {user} (owner group {group}, mode {mode:04o})"
            out.append(Check(area="serial", status="problem", detail=detail, fix=fix))
    if legacy:
        out.append(
            Check(
                area="serial",
                status="info",
                detail=f"{legacy} /dev/ttyS* with no UART behind them (placeholders the kernel always "
                "makes): not listed",
            )
        )
    if not devices:
        out.append(
            Check(
                area="serial",
                status="info",
                detail="no serial devices (/dev/ttyUSB*, /dev/ttyACM*, /dev/ttyAMA*, /dev/serial0, "
                "/dev/ttyS* with a UART)",
            )
        )
    return out
