"""A userspace point-to-point link with delay and loss between two network namespaces.

``tc netem`` is not available on the kernels we test on, so this process plays the wire: it opens two
TUN devices (``IFF_TUN | IFF_NO_PI``, so every read is one IP packet), moves one into each namespace,
gives them point-to-point addresses, and then shuttles packets between the two file descriptors. Each
packet is dropped with probability ``--loss`` or held for ``--delay`` seconds and then written to the
other side (per direction, in order: a constant delay keeps FIFO order).

Run it as its own process and stop it by PID::

    python -m tests.tunlink NS_A 198.18.60.1 NS_B 198.18.60.2 --delay 0.2 --loss 0.05 --lifetime 120

It prints ``ready`` on stdout once both interfaces are up, and statistics on stderr when it ends. It ends
by itself after ``--lifetime`` seconds, on SIGTERM/SIGINT, or when stdin closes (so it never outlives a
test that forgot it, when its stdin is a pipe). Closing the descriptors removes the devices.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import select
import signal
import stat
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_QUEUE = 20_000  # packets held per direction; beyond that the link drops (a full router queue)


@dataclass
class Direction:
    """Packets travelling from ``src`` to ``dst``."""

    src: int
    dst: int
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    forwarded: int = 0
    lost: int = 0
    overflow: int = 0


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def place(tmp_name: str, ns: str, ifname: str, address: str, *, peer: str, mtu: int) -> None:
    """Move the TUN device into ``ns``, rename it, address it and bring it up."""
    ip("link", "set", tmp_name, "netns", ns)
    if ifname != tmp_name:
        ip("-n", ns, "link", "set", tmp_name, "name", ifname)
    ip("-n", ns, "link", "set", ifname, "mtu", str(mtu))
    ip("-n", ns, "addr", "add", address, "peer", peer, "dev", ifname)
    ip("-n", ns, "link", "set", ifname, "up")


def shuttle(
    dirs: dict[int, Direction],
    *,
    delay: float,
    loss: float,
    lifetime: float,
    rng: random.Random,
    watch: int | None,
) -> None:
    """Move packets until ``lifetime`` runs out or ``watch`` (a pipe on stdin) closes."""
    a, b = dirs
    for fd in (a, b):
        os.set_blocking(fd, False)
    end = time.monotonic() + lifetime
    readers = [a, b] + ([watch] if watch is not None else [])
    while True:
        now = time.monotonic()
        if now >= end:
            break
        # Release what is due.
        next_due = end
        for d in dirs.values():
            while d.queue and d.queue[0][0] <= now:
                _, packet = d.queue.popleft()
                try:
                    os.write(d.dst, packet)
                    d.forwarded += 1
                except BlockingIOError:
                    d.overflow += 1
                except OSError:
                    d.overflow += 1  # e.g. the interface is down on that side
            if d.queue:
                next_due = min(next_due, d.queue[0][0])
        ready, _, _ = select.select(readers, [], [], max(0.0, next_due - time.monotonic()))
        now = time.monotonic()
        for fd in ready:
            if fd == watch:
                if not os.read(fd, 4096):
                    return
                continue
            d = dirs[fd]
            for _ in range(64):  # a burst per wake-up, then look at the timers again
                try:
                    packet = os.read(fd, 65536)
                except (BlockingIOError, OSError):
                    break
                if not packet:
                    break
                if loss > 0 and rng.random() < loss:
                    d.lost += 1
                elif len(d.queue) >= MAX_QUEUE:
                    d.overflow += 1
                else:
                    d.queue.append((now + delay, packet))


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tunlink", description=__doc__.split("\n")[0])
    parser.add_argument("ns_a")
    parser.add_argument("addr_a", help="IPv4 address of side A (198.18.0.0/15)")
    parser.add_argument("ns_b")
    parser.add_argument("addr_b", help="IPv4 address of side B")
    parser.add_argument("--ifname", default="tun0", help="interface name inside both namespaces")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds, each way")
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability per packet, each way")
    parser.add_argument("--lifetime", type=float, default=300.0, help="exit after this many seconds")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=None, help="seed of the loss generator")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    tag = f"tl{os.getpid()}"
    fds: list[int] = []
    dirs: dict[int, Direction] = {}
    try:
        fds = [open_tun(f"{tag}a"), open_tun(f"{tag}b")]
        place(f"{tag}a", args.ns_a, args.ifname, args.addr_a, peer=args.addr_b, mtu=args.mtu)
        place(f"{tag}b", args.ns_b, args.ifname, args.addr_b, peer=args.addr_a, mtu=args.mtu)
        dirs = {fds[0]: Direction(fds[0], fds[1]), fds[1]: Direction(fds[1], fds[0])}
        print("ready", flush=True)
        stdin_is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
        shuttle(
            dirs,
            delay=args.delay,
            loss=args.loss,
            lifetime=args.lifetime,
            rng=random.Random(seed),
            watch=0 if stdin_is_pipe else None,
        )
    finally:
        for fd in fds:
            os.close(fd)
        stats = ", ".join(
            f"{'A->B' if i == 0 else 'B->A'}: {d.forwarded} forwarded, {d.lost} lost, {d.overflow} overflow"
            for i, d in enumerate(dirs.values())
        )
        print(f"tunlink seed={seed} {stats}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
