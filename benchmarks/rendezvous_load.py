"""Load generator for the rendezvous service, on loopback only.

Starts the service in a child process (its own event loop and CPU), loads N signed records (default 10 000)
with concurrent POSTs, then measures GET /v1/records latency: one page (the default size, and the largest, as
``meshserial list`` asks for), a walk through every page of the listing, and the ``?name=`` and ``?id=``
filters.  Prints figures, page sizes included; asserts nothing.  The goal from the issue: the whole listing of
10 000 records under 50 ms at p99.  ``--ports 32`` makes records near the 4096-byte limit.

    python benchmarks/rendezvous_load.py [--records 10000] [--ports 2] [--gets 200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nacl.signing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshserial.proto import records  # noqa: E402


def _serve(db: Path) -> None:
    """Child process: run the service on an ephemeral port and print it."""
    from meshserial.rendezvous.app import Settings, serve

    def listening(bound: list[tuple[str, int]]) -> None:
        print(bound[0][1], flush=True)

    settings = Settings(
        host="127.0.0.1",
        port=0,
        db_path=db,
        rate_limit=False,
        max_records=1_000_000,
        max_ids_per_source=1_000_000,  # every record comes from loopback here
    )
    asyncio.run(serve(settings, on_listening=listening))


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _report(label: str, samples: list[float], size: int) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"{label:<28} n={len(ms):<5} p50={statistics.median(ms):7.2f} ms  p99={_percentile(ms, 0.99):7.2f} ms"
        f"  max={max(ms):7.2f} ms  body={size / 1024:8.1f} KiB"
    )


def _make_envelopes(count: int, extra_ports: int) -> list[tuple[bytes, str, str]]:
    now = int(time.time())
    out = []
    for i in range(count):
        key = nacl.signing.SigningKey(i.to_bytes(32, "big"))
        ports = [
            records.PortInfo(name=f"port-{i}", device="/dev/ttyUSB0"),
            records.PortInfo(name=f"group-{i % 100}", device="/dev/ttyACM0", state=records.PortState.IN_USE),
        ] + [
            records.PortInfo(name=f"extra-{n:02d}", device=f"/dev/serial/by-id/usb-FTDI_{i:06d}_{n:02d}")
            for n in range(extra_ports)
        ]
        addresses = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:7000", "[fd00::1]:7000"]
        env = records.sign_record(key, seq=1, expires=now + 3600, ports=ports, addresses=addresses)
        out.append((env, f"port-{i}", records.b64url_encode(bytes(key.verify_key))))
    return out


async def _timed_gets(session: aiohttp.ClientSession, urls: list[str]) -> tuple[list[float], int]:
    samples, size = [], 0
    for url in urls:
        start = time.perf_counter()
        async with session.get(url) as response:
            body = await response.read()
        samples.append(time.perf_counter() - start)
        size = len(body)
        if response.status != 200:
            raise SystemExit(f"GET {url} -> {response.status}")
    return samples, size


async def _walk(session: aiohttp.ClientSession, url: str) -> tuple[float, list[int]]:
    """Follow every page of the listing as the client does; return the time taken and each page's size."""
    sizes: list[int] = []
    cursor: str | None = None
    start = time.perf_counter()
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        async with session.get(url, params=params) as response:
            body = await response.read()
        sizes.append(len(body))
        cursor = json.loads(body[body.rindex(b'"next":') + 7 : -1])  # the tail only: no need to parse it all
        if cursor is None:
            return time.perf_counter() - start, sizes


async def _bench(base: str, count: int, ports: int, gets: int, concurrency: int) -> None:
    t0 = time.perf_counter()
    envelopes = _make_envelopes(count, max(0, ports - 2))
    average = sum(len(env) for env, _, _ in envelopes) / count
    print(
        f"signed {count} records of {average:.0f} bytes on average in {time.perf_counter() - t0:.2f} s"
        " (client side, not measured below)"
    )
    url = base + "/v1/records"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(envelopes)
        latencies: list[float] = []

        async def worker() -> None:
            for env, _, _ in queue:
                start = time.perf_counter()
                async with session.post(url, data=env) as response:
                    await response.read()
                    if response.status != 204:
                        raise SystemExit(f"POST -> {response.status}")
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        elapsed = time.perf_counter() - start
        print(f"POST {count} records, {concurrency} concurrent: {count / elapsed:8.0f} records/s  ", end="")
        _report("", latencies, 0)

        await _timed_gets(session, [url] * 5)  # warm up
        samples, size = await _timed_gets(session, [url] * gets)
        _report("GET first page (default)", samples, size)
        samples, size = await _timed_gets(session, [url + "?limit=1000"] * gets)
        _report("GET first page (limit=1000)", samples, size)
        walks = [await _walk(session, url) for _ in range(max(1, gets // 10))]
        sizes = walks[0][1]
        _report(f"GET all {len(sizes)} pages", [elapsed for elapsed, _ in walks], sum(sizes))
        print(f"{'':<28} pages of {min(sizes) / 1024:.1f} to {max(sizes) / 1024:.1f} KiB (limit=1000)")
        names = [envelopes[i * 7919 % count][1] for i in range(gets)]
        samples, size = await _timed_gets(session, [f"{url}?name={n}" for n in names])
        _report("GET ?name=<one port>", samples, size)
        samples, size = await _timed_gets(session, [f"{url}?name=group-{i % 100}" for i in range(gets)])
        _report(f"GET ?name=<{count // 100} ports>", samples, size)
        ids = [envelopes[i * 7919 % count][2] for i in range(gets)]
        samples, size = await _timed_gets(session, [f"{url}?id={i}" for i in ids])
        _report("GET ?id=<one server>", samples, size)

        # A write changes the sorted index in place; the next page pays nothing for it.
        rebuild: list[float] = []
        for i in range(min(50, count)):
            key = nacl.signing.SigningKey(i.to_bytes(32, "big"))
            env = records.sign_record(
                key, seq=2 + i, expires=int(time.time()) + 3600, ports=[], addresses=["10.0.0.1:7000"]
            )
            async with session.post(url, data=env) as response:
                await response.read()
            samples, size = await _timed_gets(session, [url])
            rebuild.extend(samples)
        _report("GET first page after a write", rebuild, size)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--ports", type=int, default=2, help="ports per record (up to 32)")
    parser.add_argument("--gets", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        _serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MESHSERIAL_HOME": tmp}
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(Path(tmp) / "bench.sqlite3")],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        try:
            assert child.stdout is not None
            port = int(child.stdout.readline())
            asyncio.run(
                _bench(f"http://127.0.0.1:{port}", args.records, args.ports, args.gets, args.concurrency)
            )
        finally:
            child.terminate()
            child.wait(timeout=10)


if __name__ == "__main__":
    main()
