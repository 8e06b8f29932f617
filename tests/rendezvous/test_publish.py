"""``share --rendezvous`` in-process: the Publisher keeps the server's record in step with its ports."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from meshserial.advertise import PublishConfig, Publisher
from meshserial.discovery.overlay import Interface
from meshserial.keys import Identity
from meshserial.net.sharing import Mode, SharedPort
from meshserial.ports.memory import MemoryPort
from meshserial.proto import records
from meshserial.rendezvous.app import Settings, read_allow_file
from tests.discovery.test_publish import FakeSession

from .conftest import Server, async_test, running, with_settings


async def _records(server: Server) -> list[records.Record]:
    status, body = await server.get()
    assert status == 200
    return [records.verify_envelope(e, now=time.time()) for e in body["records"]]


async def _until(server: Server, check: Any, attempts: int = 200) -> list[records.Record]:
    """Ask the service until ``check(records)`` holds (at most ``attempts`` times, 50 ms apart)."""
    for _ in range(attempts):
        if check(found := await _records(server)):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached: {found}")


@async_test
async def test_publisher_registers_updates_and_withdraws(settings: Settings) -> None:
    interfaces = [Interface(name="eth0", addresses=("198.18.1.1",))]
    port = MemoryPort()
    shared = SharedPort("gps", port)
    await shared.start()
    identity = Identity.generate()
    lines: list[str] = []
    async with running(with_settings(settings, clock=time.time)) as server:
        config = PublishConfig(mdns=False, rendezvous=server.url, debounce=0.05, rescan_interval=0.2)
        publisher = Publisher(
            [shared], {"gps": "sim:echo"}, identity, host="0.0.0.0", tcp_port=7217, config=config,
            announce=lines.append, interfaces=lambda: list(interfaces),
        )  # fmt: skip
        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(publisher.run())
            (record,) = await _until(server, lambda found: len(found) == 1)
            assert record.server_id == identity.public_id and record.addresses == ("198.18.1.1:7217",)
            assert record.ports == (
                records.PortInfo(name="gps", device="simulated echo device", state=records.PortState.FREE),
            )
            assert lines == [f"registered gps with rendezvous {server.url}"]
            shared.attach(FakeSession("alice"), Mode.READ_WRITE)
            await _until(server, lambda found: found[0].ports[0].state is records.PortState.IN_USE)
            # A ZeroTier address that shows up later is published at the next interface scan.
            interfaces.append(Interface(name="zt0", addresses=("198.18.2.1",), overlay="zerotier"))
            await _until(server, lambda found: found[0].addresses == ("198.18.1.1:7217", "198.18.2.1:7217"))
            task.cancel()
        assert await _records(server) == []  # withdrawn on the way out
    await shared.aclose()


def test_allow_file_takes_ms1_and_base64url_ids(tmp_path: Path) -> None:
    one, two = Identity.generate(), Identity.generate()
    allow = tmp_path / "allow"
    allow.write_text(
        f"# servers\n{one.id_string}  # the lab pi\n{records.b64url_encode(two.public_id)}\n\n",
        encoding="utf-8",
    )
    assert read_allow_file(allow) == {one.public_id, two.public_id}
