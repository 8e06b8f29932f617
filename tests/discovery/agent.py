"""A small mDNS peer for namespace tests: ``python -m tests.discovery.agent advertise|browse|watch …``.

A process cannot move single asyncio tasks between network namespaces, so each namespace in a test
runs one of these. Output is JSON, one object per line, on stdout.

* ``advertise``: publishes ports, prints ``{"ready": [...published names...]}`` once on the wire,
  then serves until SIGTERM, when it says goodbye (Advertiser.aclose) and exits 0.
* ``browse``: one :func:`browse`, prints ``{"elapsed": s, "found": [...]}``.
* ``watch``: prints one line per Browser event until SIGTERM or ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time

from meshserial.discovery import mdns, overlay


def _emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _sigterm_event() -> asyncio.Event:
    """Set on SIGTERM; installed before we report readiness so the first SIGTERM is always ours."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def advertise(args: argparse.Namespace) -> None:
    stop = _sigterm_event()
    interfaces = overlay.select_interfaces(args.interface)
    adv = mdns.Advertiser(
        interfaces=interfaces, host_label=args.host_label, tcp_port=args.tcp_port, host=args.host
    )
    async with adv:
        for name in args.port:
            await adv.add(
                mdns.ServiceAd(
                    name=name, port=0, server_id=args.id, state="free", rights="rw",
                    device={"vid": "0403", "pid": "6001", "product": "FT232R"},
                )
            )  # fmt: skip
        settled = await adv.wait_settled(20)
        _emit({"ready": settled, "names": [n for p in args.port for n in adv.published_name(p)]})
        await stop.wait()


async def browse(args: argparse.Namespace) -> None:
    interfaces = overlay.select_interfaces(args.interface)
    start = time.monotonic()
    found = await mdns.browse(interfaces=interfaces, timeout=args.timeout)
    _emit({"elapsed": time.monotonic() - start, "found": [dataclasses.asdict(d) for d in found]})


async def watch(args: argparse.Namespace) -> None:
    stop = _sigterm_event()
    interfaces = overlay.select_interfaces(args.interface)
    async with mdns.Browser(interfaces=interfaces) as browser:
        _emit({"watching": [i.name for i in interfaces]})

        async def report() -> None:
            async for event in browser:
                _emit({"change": event.change, "entry": dataclasses.asdict(event.entry)})

        task = asyncio.create_task(report())
        try:
            async with asyncio.timeout(args.timeout):
                await stop.wait()
        except TimeoutError:
            pass
        task.cancel()
        await asyncio.wait([task])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["advertise", "browse", "watch"])
    parser.add_argument("--interface", action="append")
    parser.add_argument("--port", action="append", default=[])
    parser.add_argument("--id", default="ms1test")
    parser.add_argument("--host", default="testhost")
    parser.add_argument("--host-label", default="ms-test")
    parser.add_argument("--tcp-port", type=int, default=7217)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run({"advertise": advertise, "browse": browse, "watch": watch}[args.mode](args))


if __name__ == "__main__":
    main()
