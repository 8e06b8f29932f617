"""Secure channel throughput: encrypt + frame + deframe + decrypt 64 MiB in 16 KiB records.

Run from the repository root: ``python -m benchmarks.channel_throughput [MiB]``. Prints MB/s
(10^6 bytes per second) for the whole sans-IO path, both ends in one process, no sockets. No
assertions: this is a measurement.
"""

from __future__ import annotations

import sys
import time

from meshserial.proto.channel import DataReceived, SecureChannel

CHUNK = 16 * 1024
READ_SIZE = 256 * 1024  # what one socket read typically hands the receiver


def _pair() -> tuple[SecureChannel, SecureChannel]:
    client = SecureChannel(initiator=True, static_private=bytes(range(1, 33)), payload=b"c")
    server = SecureChannel(initiator=False, static_private=bytes(range(33, 65)), payload=b"s")
    client.initiate()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.accept_peer()
    server.receive_data(client.data_to_send())
    return client, server


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    total = mib * 1024 * 1024
    client, server = _pair()
    block = bytes(range(256)) * (CHUNK // 256)
    received = 0
    start = time.perf_counter()
    for _ in range(total // (16 * CHUNK)):
        for _ in range(16):
            client.send_data(block)  # an application write of 16 KiB -> one record
        wire = memoryview(client.data_to_send())
        for offset in range(0, len(wire), READ_SIZE):
            for event in server.receive_data(wire[offset : offset + READ_SIZE]):
                if isinstance(event, DataReceived):
                    received += len(event.data)
    elapsed = time.perf_counter() - start
    if received != total:
        raise SystemExit(f"received {received} of {total} bytes")
    print(f"{mib} MiB in {CHUNK // 1024} KiB records: {elapsed:.3f} s, {total / elapsed / 1e6:.1f} MB/s")


if __name__ == "__main__":
    main()
