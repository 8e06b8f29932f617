"""``meshserial doctor``: look at interfaces, mDNS, keys, trust files and serial devices; suggest fixes.

Each check ends as ``ok``, ``info``, ``warning`` or ``problem``; only problems make the exit status 1.
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
from meshserial.trust import AuthorizedClients, KnownServers

HELP = "check interfaces, mDNS, keys, trust files and serial-device permissions"
Status = Literal["ok", "info", "warning", "problem"]
SERIAL_GLOBS = ("/dev/ttyUSB*", "/dev/ttyACM*")


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
    problems = sum(c.status == "problem" for c in checks)
    if as_json:
        print(json.dumps({"ok": not problems, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(report(checks))
        summary = f"{problems} problem{'s' if problems != 1 else ''} found" if problems else "all good"
        print(f"\n{summary}")
    sys.stdout.flush()
    return 1 if problems else 0


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
    loaders: tuple[tuple[str, Callable[[], int]], ...] = (
        ("authorized clients", lambda: len(AuthorizedClients().load().entries)),
        ("pinned servers", lambda: len(KnownServers().load().entries)),
    )
    for what, loader in loaders:
        try:
            count = loader()
        except MeshserialError as exc:
            out.append(_failed("trust", exc))
        else:
            out.append(Check(area="trust", status="ok", detail=f"{count} {what}"))
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


def serial_checks() -> list[Check]:
    out: list[Check] = []
    user = _user()
    root = os.geteuid() == 0
    groups = set(os.getgroups()) | {os.getegid()}
    devices = sorted(p for pattern in SERIAL_GLOBS for p in glob.glob(pattern))
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
    for device in devices:
        try:
            st = os.stat(device)
        except OSError:
            continue
        group = _group_name(st.st_gid)
        if os.access(device, os.R_OK | os.W_OK):
            out.append(Check(area="serial", status="ok", detail=f"{device} can be opened (group {group})"))
        else:
            fix = (
                "log out and back in (or run 'newgrp " + group + "')"
                if _member_in_db(user, group)
                else f"sudo usermod -aG {group} {user}, then log out and back in"
            )
            mode = stat.S_IMODE(st.st_mode)
            detail = f"{device} cannot be opened by {user} (owner group {group}, mode {mode:04o})"
            out.append(Check(area="serial", status="problem", detail=detail, fix=fix))
    if not devices:
        out.append(
            Check(area="serial", status="info", detail="no USB serial devices (/dev/ttyUSB*, /dev/ttyACM*)")
        )
    return out
