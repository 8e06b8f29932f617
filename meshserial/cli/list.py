"""``meshserial list``: the shared ports mDNS and a rendezvous know of, with their state and trust."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Coroutine
from typing import Any

from meshserial.cli.options import add_discovery_options, find_options
from meshserial.discovery.mdns import Browser, Discovered, device_summary
from meshserial.finder import FindOptions, Found, assess, browse_interfaces, fetch, find, merge_sources
from meshserial.proto.text import escape

HELP = "list shared serial ports on the network (mDNS, rendezvous)"
DESCRIPTION = (
    "List meshserial ports (and ser2net ports) found by mDNS on the chosen interfaces and, with "
    "--rendezvous, at a rendezvous service. TRUST compares each server's advertised identity with "
    "known_servers (docs/security.md); discovery only suggests, 'use' proves the identity."
)
COLUMNS = ("NAME", "HOST", "VIA", "ADDRESSES", "DEVICE", "STATE", "TRUST", "HOLDER")
PROBE_INTERVAL = 5.0  # --watch: how often entries are probed again (a killed server turns unreachable)
RENDEZVOUS_INTERVAL = 15.0  # --watch: how often the rendezvous is asked again
MAX_CELL = 48


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("list", help=HELP, description=DESCRIPTION, parents=[common])
    parser.add_argument("--json", action="store_true", help="print a JSON list (JSON lines with --watch)")
    parser.add_argument(
        "--watch", action="store_true", help="keep watching and show changes until Ctrl-C (or SIGTERM)"
    )
    add_discovery_options(parser, timeout=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    options = find_options(args)
    if args.watch:
        return watch(options, as_json=args.json)
    return list_once(options, as_json=args.json)


# ------------------------------------------------------------------------------------------ output


def cells(found: Found) -> tuple[str, ...]:
    """One table row, every cell escaped (:func:`~meshserial.proto.text.escape`).

    Nearly every field is what some host on the network advertised (TXT values, instance and host
    names, a ZeroTier network name in VIA, a rendezvous record's device string): none of it may reach
    the terminal raw. Escaping here, before :func:`table` measures the columns, keeps them aligned.
    """
    entry = found.entry
    trust = "none (ser2net)" if entry.kind == "ser2net" else found.trust
    row = (
        entry.name,
        entry.host or "-",
        ", ".join(entry.via) or "-",
        ", ".join(entry.addresses) or "-",
        device_summary(entry.device) or "-",
        found.state,
        trust,
        entry.holder or "-",
    )
    return tuple(escape(cell) for cell in row)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(rows: list[tuple[str, ...]]) -> str:
    """Aligned columns with a header; long cells are cut."""
    shown = [COLUMNS, *([_cut(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in shown) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in shown
    )


def _nothing_found(options: FindOptions) -> None:
    where = [*(["mDNS"] if options.mdns else []), *([options.rendezvous] if options.rendezvous else [])]
    print(
        f"meshserial: no shared ports found (looked with {' and '.join(where) or 'nothing'}); "
        "see 'meshserial doctor' if you expected some",
        file=sys.stderr,
        flush=True,
    )


async def list_once(options: FindOptions, *, as_json: bool) -> int:
    found = await find(options)
    if as_json:
        print(json.dumps([f.to_json() for f in found], indent=2), flush=True)
    elif found:
        print(table([cells(f) for f in found]), flush=True)
    if not found:
        _nothing_found(options)
    return 0


# ------------------------------------------------------------------------------------------- watch


def _key(found: Found) -> tuple[str, str, str]:
    entry = found.entry
    return (entry.kind, entry.server_id or entry.host, entry.name)


class _Screen:
    """Shows each new state: a redrawn table on a terminal, change lines or JSON lines otherwise."""

    def __init__(self, options: FindOptions, *, as_json: bool) -> None:
        self._options = options
        self._json = as_json
        self._tty = sys.stdout.isatty() and not as_json
        self._shown: dict[tuple[str, str, str], tuple[str, ...]] | None = None

    def show(self, found: list[Found]) -> None:
        rows = {_key(f): cells(f) for f in found}
        if rows == self._shown:
            return
        previous, self._shown = self._shown, rows
        if self._json:
            print(json.dumps([f.to_json() for f in found]), flush=True)
        elif self._tty:
            body = table(list(rows.values())) if rows else "(nothing found yet)"
            print(f"\x1b[H\x1b[2J{body}\n\nwatching… Ctrl-C to stop", flush=True)
        else:
            self._lines(previous or {}, rows)
        if previous is None and not rows:
            _nothing_found(self._options)

    @staticmethod
    def _lines(before: dict[Any, tuple[str, ...]], after: dict[Any, tuple[str, ...]]) -> None:
        for key, row in after.items():
            old = before.get(key)
            if old != row:
                print(("+ " if old is None else "~ ") + "  ".join(row), flush=True)
        for key, row in before.items():
            if key not in after:
                print("- " + "  ".join(row[:4]), flush=True)


async def watch(options: FindOptions, *, as_json: bool) -> int:
    """Live view until cancelled (Ctrl-C / SIGTERM end the command with status 0)."""
    screen = _Screen(options, as_json=as_json)
    records: list[Discovered] = []
    changed = asyncio.Event()
    browser: Browser | None = None
    interfaces = await browse_interfaces(options) if options.mdns else []
    async with contextlib.AsyncExitStack() as stack:
        if interfaces:
            browser = await stack.enter_async_context(
                Browser(interfaces=interfaces, include_ser2net=options.include_ser2net)
            )
        async with asyncio.TaskGroup() as tasks:
            if browser is not None:
                tasks.create_task(_follow(browser, changed))
            if options.rendezvous:
                tasks.create_task(_poll(options, records, changed))
            if browser is not None:
                await browser.settle(timeout=options.timeout)
            loop = asyncio.get_running_loop()
            while True:
                changed.clear()
                entries = merge_sources(browser.snapshot() if browser is not None else [], records)
                screen.show(await assess(entries, options))
                next_probe = loop.time() + PROBE_INTERVAL
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_probe - loop.time())):
                        await changed.wait()
    return 0


async def _follow(browser: Browser, changed: asyncio.Event) -> None:
    async for _event in browser:
        changed.set()


async def _poll(options: FindOptions, records: list[Discovered], changed: asyncio.Event) -> None:
    while True:
        fresh = await fetch(options)
        if fresh != records:
            records[:] = fresh
            changed.set()
        await asyncio.sleep(RENDEZVOUS_INTERVAL)
