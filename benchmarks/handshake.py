"""Connection set-up cost of the encrypted path, in one process on loopback.

Run from the repository root: ``python -m benchmarks.handshake [--count N] [--json FILE]``.

A :class:`~meshserial.server.SecureServer` shares ``sim:echo`` on 127.0.0.1; the client has its own
identity, is authorized on the server and has the server pinned. Each round: TCP connect -> Noise
handshake -> server check -> hello -> accept -> RFC 2217 negotiation -> close (and wait until the server
has released the port, untimed). Reported: median and p99 of (a) handshake + authorization, until the
Accept arrives, and (b) until the RFC 2217 session is active. For reference, (c) the same to the plain
RFC 2217 listener (no handshake). Both ends share one event loop and one CPU: the figures are the sum
of client and server work plus loopback latency. No assertions: this is a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RELEASE_TIMEOUT = 5.0  # the server must free the port this soon after a close
STEP_TIMEOUT = 10.0
RELEASE_POLL = 0.0005
SETTLE = 0.02


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p99": percentile(values, 0.99), "min": min(values)}


async def _wait_free(shared: Any) -> None:
    """Until the server has detached the last session (so the next rw hello is not refused)."""
    for _ in range(int(RELEASE_TIMEOUT / RELEASE_POLL)):
        if shared.holder is None:
            return
        await asyncio.sleep(RELEASE_POLL)
    raise RuntimeError(f"the server still holds the port {RELEASE_TIMEOUT:g} s after the client closed")


async def run(count: int, warmup: int) -> dict[str, dict[str, float]]:
    # Imported here, after MESHSERIAL_HOME points at a temporary directory.
    import meshserial.client as client_module
    from meshserial.client import ConnectOptions, connect_target, parse_target
    from meshserial.finder import server_label
    from meshserial.keys import Identity, load_or_create_identity
    from meshserial.net.listener import PlainListeners
    from meshserial.net.rfc2217_client import connect_rfc2217
    from meshserial.net.sharing import SharedPort
    from meshserial.ports.factory import open_port
    from meshserial.proto.settings import SerialSettings
    from meshserial.server import SecureServer
    from meshserial.trust import AuthorizedClients, KnownServers

    # The server's identity lives in memory; the client's is the one ``connect_target`` loads from
    # MESHSERIAL_HOME. Client and server share that directory (different files).
    server_id = Identity.generate()
    client_id, _ = load_or_create_identity()
    AuthorizedClients().add(client_id.public_id, name="bench", ports_spec="*=rw")
    shared = SharedPort("dev", open_port("sim:echo", SerialSettings()))
    await shared.start()
    secure = SecureServer([shared], server_id, "127.0.0.1", 0)
    plain = PlainListeners([shared], "127.0.0.1", 0)

    # (a) is when ``connect_secure`` returns: the Accept has arrived. ``connect_target`` looks the
    # function up in its module at call time, so a timing wrapper there sees every connection.
    original = client_module.connect_secure
    accept_marks: list[int] = []

    async def timed_connect_secure(*args: Any, **kwargs: Any) -> Any:
        answer = await original(*args, **kwargs)
        accept_marks.append(time.perf_counter_ns())
        return answer

    client_module.connect_secure = timed_connect_secure
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the "sharing dev on ..." announcements
            await secure.start()
            await plain.start()
        assert secure.address is not None
        host, port = secure.address
        plain_port = int(plain.addresses[0][1].rsplit(":", 1)[1])
        KnownServers().load().pin(server_label(host, port), server_id.public_id, via="benchmark")
        target = parse_target(f"dev@{host}:{port}")
        options = ConnectOptions()
        accepted: list[float] = []
        active: list[float] = []
        plain_active: list[float] = []
        for i in range(warmup + count):
            accept_marks.clear()
            start = time.perf_counter_ns()
            async with asyncio.timeout(STEP_TIMEOUT):
                connection = await connect_target(target, options)
            t_active = time.perf_counter_ns()
            if len(accept_marks) != 1:
                raise RuntimeError(f"expected one secure connection, saw {len(accept_marks)}")
            # Untimed pause before closing: a CLOSE that shares a TCP read with the session's last RFC 2217
            # bytes makes the server fail the connection instead of ending the session (see README).
            await asyncio.sleep(SETTLE)
            async with asyncio.timeout(STEP_TIMEOUT):
                await connection.aclose()
            await _wait_free(shared)

            start_plain = time.perf_counter_ns()
            plain_remote = await connect_rfc2217("127.0.0.1", plain_port, timeout=STEP_TIMEOUT)
            t_plain = time.perf_counter_ns()
            await plain_remote.aclose()
            await _wait_free(shared)
            if i >= warmup:
                accepted.append((accept_marks[0] - start) / 1e6)
                active.append((t_active - start) / 1e6)
                plain_active.append((t_plain - start_plain) / 1e6)
    finally:
        client_module.connect_secure = original
        await secure.aclose()
        await plain.aclose()
        await shared.aclose()
    return {
        "secure_until_accept_ms": summary(accepted),
        "secure_until_rfc2217_active_ms": summary(active),
        "plain_until_rfc2217_active_ms": summary(plain_active),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.handshake", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--count", type=int, default=200, help="measured connections (200)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured connections first (10)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 0:
        parser.error("--count must be positive and --warmup not negative")
    print(f"CPUs: {os.cpu_count()}   Python {platform.python_version()}   {platform.platform()}")
    print(f"{args.warmup} warm-up + {args.count} measured connections, client and server in one event loop")
    with tempfile.TemporaryDirectory(prefix="meshserial-bench-") as home:
        os.environ["MESHSERIAL_HOME"] = home
        results = asyncio.run(run(args.count, args.warmup))
    labels = {
        "secure_until_accept_ms": "(a) secure: connect -> Noise handshake -> hello -> Accept",
        "secure_until_rfc2217_active_ms": "(b) secure: connect -> ... -> RFC 2217 session active",
        "plain_until_rfc2217_active_ms": "(c) plain RFC 2217: connect -> session active (reference)",
    }
    width = max(len(v) for v in labels.values())
    print(f"\n{'':{width}}  median ms     p99 ms     min ms")
    for key, label in labels.items():
        r = results[key]
        print(f"{label:{width}}  {r['median']:9.2f}  {r['p99']:9.2f}  {r['min']:9.2f}")
    if args.json is not None:
        document = {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "count": args.count,
            "warmup": args.warmup,
            "results": results,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
