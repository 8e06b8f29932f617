"""How long ``meshserial list`` takes to find 50 ports on 5 hosts, in network namespaces.

Five "hosts" (network namespaces on one bridge, 198.18.10.0/24) each run ``meshserial share`` with ten
``sim:echo`` ports; a sixth namespace runs ``meshserial list --json`` N times. Each run is timed from
launching the process to its exit (interpreter start-up, imports, mDNS browse, TCP probes, trust check)
and must find all 50 ports, free and reachable. Prints the figures; asserts nothing but completeness.
Target from the issue: median under 1.5 s. Needs root (``ip netns``).

    sudo python -m benchmarks.discovery [--runs 10] [--hosts 5] [--ports 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._procs import BenchError, Proc  # noqa: E402
from tests.netns import Netns, netns_unavailable  # noqa: E402


def _home(base: Path, name: str) -> dict[str, str]:
    path = base / name
    path.mkdir(mode=0o700)
    return dict(os.environ, MESHSERIAL_HOME=str(path), PYTHONUNBUFFERED="1")


def run(runs: int, hosts: int, ports: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="ms-bench-disc-") as tmp, Netns() as net:
        base = Path(tmp)
        lan = net.bridge("lan")
        client = net.host("cli")
        net.attach(client, lan, ifname="eth0", address="198.18.10.100/24")
        servers: list[Proc] = []
        try:
            started = time.monotonic()
            for h in range(hosts):
                ns = net.host(f"s{h}")
                net.attach(ns, lan, ifname="eth0", address=f"198.18.10.{h + 1}/24")
                devices = [f"sim:echo=tty{i}" for i in range(ports)]
                argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "meshserial", "share", *devices,
                        "--listen", "0.0.0.0:7217"]  # fmt: skip
                servers.append(Proc(f"share{h}", argv, env=_home(base, f"s{h}")))
            for proc in servers:
                proc.wait_line(r"advertising .* on eth0 \(mDNS\)", timeout=60)
            print(f"{hosts} servers with {ports} ports each advertised in {time.monotonic() - started:.1f} s")
            env = _home(base, "client")
            argv = ["ip", "netns", "exec", client, sys.executable, "-m", "meshserial", "list", "--json"]
            times: list[float] = []
            for i in range(runs):
                t0 = time.monotonic()
                result = subprocess.run(
                    argv, env=env, capture_output=True, text=True, timeout=60, check=False
                )
                elapsed = time.monotonic() - t0
                if result.returncode != 0:
                    raise BenchError(f"list failed: {result.stderr}")
                found = json.loads(result.stdout)
                good = [e for e in found if e["state"] == "free" and e["reachable"]]
                print(f"run {i + 1:>2}: {elapsed:.3f} s, {len(good)}/{len(found)} ports free and reachable")
                if len(good) != hosts * ports:
                    raise BenchError(f"run {i + 1} found {len(good)} of {hosts * ports} ports")
                times.append(elapsed)
        finally:
            for proc in servers:
                proc.stop()
    return {
        "runs": runs,
        "ports": hosts * ports,
        "hosts": hosts,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.discovery", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=10, help="list runs to time (default 10)")
    parser.add_argument("--hosts", type=int, default=5, help="server namespaces (default 5)")
    parser.add_argument("--ports", type=int, default=10, help="ports per server (default 10)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    reason = netns_unavailable()
    if reason is not None:
        print(f"benchmarks.discovery: skipped: {reason}", file=sys.stderr)
        return 2
    result = run(args.runs, args.hosts, args.ports)
    print(
        f"meshserial list --json, {result['ports']} ports on {result['hosts']} hosts: "
        f"median {result['median_s']:.3f} s, min {result['min_s']:.3f} s, max {result['max_s']:.3f} s "
        f"over {result['runs']} runs (target: median < 1.5 s)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
