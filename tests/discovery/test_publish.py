"""``share``'s publishing in-process: the SharedPort observer, the Publisher's adverts and addresses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshserial.advertise import PublishConfig, Publisher, describe, record_device
from meshserial.discovery import mdns
from meshserial.discovery import zc as zc_plumbing
from meshserial.discovery.overlay import Interface, loopback_interface
from meshserial.keys import Identity
from meshserial.net.sharing import Mode, SharedPort
from meshserial.ports.base import PeerClosed, PeerOpened, PortEvent
from meshserial.ports.memory import MemoryPort
from tests.discovery.test_mdns import aio


class FakeSession:
    """The least a SharedPort needs from a session."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.kicked: list[str] = []

    def deliver(self, data: bytes) -> None:
        pass

    def device_event(self, event: PortEvent) -> None:
        pass

    def backlog(self) -> int:
        return 0

    def kick(self, reason: str) -> None:
        self.kicked.append(reason)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@aio
async def test_shared_port_reports_state_changes() -> None:
    port = MemoryPort()
    shared = SharedPort("gps", port)
    await shared.start()
    seen: list[tuple[str, str | None]] = []
    shared.observe(lambda p: seen.append((p.state, p.holder.label if p.holder else None)))
    shared.observe(lambda p: 1 / 0)  # a failing observer is logged, the others still run
    watcher, writer = FakeSession("bob"), FakeSession("alice")
    shared.attach(watcher, Mode.READ_ONLY)  # a watcher changes nothing worth advertising
    shared.attach(writer, Mode.READ_WRITE)
    shared.detach(watcher)
    shared.detach(writer)
    port.emit(PeerClosed(reason="unplugged"))
    port.emit(PeerOpened())
    await shared.aclose()
    assert seen == [("in-use", "alice"), ("free", None), ("offline", None), ("free", None), ("offline", None)]


def test_device_description() -> None:
    assert describe("sim:echo") == {"desc": "simulated echo device"}
    assert describe("/dev/does-not-exist") == {"desc": "/dev/does-not-exist"}
    device = {"vid": "0403", "pid": "6001", "mfr": "FTDI", "product": "FT232R USB UART", "serial": "A5"}
    assert mdns.device_summary(device) == "FTDI FT232R USB UART 0403:6001 #A5"
    assert mdns.device_summary({"mfr": "FTDI", "product": "FTDI thing"}) == "FTDI thing"
    assert record_device("/dev/ttyUSB0", {}) == "/dev/ttyUSB0"
    assert record_device("x", {"desc": "a\x00b" + "c" * 300}) == "a b" + "c" * 253


def _iface(name: str, *addresses: str, **kw: Any) -> Interface:
    return Interface(name=name, addresses=addresses, **kw)


INTERFACES = [
    _iface("lo", "127.0.0.1", "::1", is_loopback=True),
    _iface("eth0", "198.18.1.1", "2001:db8::1", "fe80::1%eth0"),
    _iface("zt7f3a0001", "198.18.2.1", overlay="zerotier"),
    _iface("docker0", "172.17.0.1"),
    _iface("eth1", "198.18.3.1", is_up=False),
]


def _publisher(host: str, **kw: Any) -> Publisher:
    return Publisher(
        [],
        {},
        Identity.generate(),
        host=host,
        tcp_port=7217,
        config=PublishConfig(**kw),
        interfaces=lambda: INTERFACES,
    )


@aio
async def test_record_addresses() -> None:
    assert await _publisher("0.0.0.0").record_addresses() == ["198.18.1.1:7217", "198.18.2.1:7217"]
    assert await _publisher("::").record_addresses() == [
        "198.18.1.1:7217", "[2001:db8::1]:7217", "198.18.2.1:7217",
    ]  # fmt: skip
    assert await _publisher("198.18.2.1").record_addresses() == ["198.18.2.1:7217"]
    assert await _publisher("localhost").record_addresses() == ["127.0.0.1:7217"]


@aio
async def test_mdns_interfaces_follow_the_listen_address_and_patterns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert [i.name for i in await _publisher("127.0.0.1").mdns_interfaces()] == ["lo"]
    assert [i.name for i in await _publisher("0.0.0.0").mdns_interfaces()] == ["eth0", "zt7f3a0001"]
    assert [i.name for i in await _publisher("198.18.2.1").mdns_interfaces()] == ["zt7f3a0001"]
    assert [i.name for i in await _publisher("0.0.0.0", interfaces=("zt*",)).mdns_interfaces()] == [
        "zt7f3a0001"
    ]
    publisher = _publisher("0.0.0.0", interfaces=("wg*",))
    assert await publisher.mdns_interfaces() == []
    assert await publisher.mdns_interfaces() == []  # warned once only
    warnings = [r.getMessage() for r in caplog.records if "not advertising" in r.getMessage()]
    assert len(warnings) == 1 and "no interface matches 'wg*'" in warnings[0]


async def _event(browser: mdns.Browser, server_id: str, timeout: float = 8.0) -> mdns.BrowseEvent:
    async with asyncio.timeout(timeout):
        async for event in browser:
            if event.entry.server_id == server_id:
                return event
    raise AssertionError("browser ended")


@aio
async def test_publisher_advertises_state_and_says_goodbye() -> None:
    port = MemoryPort()
    shared = SharedPort("gps", port)
    await shared.start()
    identity = Identity.generate()
    announced = asyncio.Event()
    lines: list[str] = []

    def announce(line: str) -> None:
        lines.append(line)
        announced.set()

    publisher = Publisher(
        [shared], {"gps": "sim:echo"}, identity, host="127.0.0.1", tcp_port=7399, config=PublishConfig(),
        announce=announce,
    )  # fmt: skip
    async with asyncio.timeout(30), asyncio.TaskGroup() as tasks:
        task = tasks.create_task(publisher.run())
        await announced.wait()
        assert lines == ["advertising gps on lo (mDNS)"]
        async with mdns.Browser(interfaces=[loopback_interface()]) as browser:
            event = await _event(browser, identity.id_string)
            assert (event.change, event.entry.name, event.entry.state) == ("added", "gps", "free")
            assert event.entry.addresses == ["127.0.0.1:7399"]
            assert event.entry.device == {"desc": "simulated echo device"}
            assert event.entry.rights == "auth"
            shared.attach(FakeSession("alice"), Mode.READ_WRITE)
            event = await _event(browser, identity.id_string)
            assert (event.change, event.entry.state, event.entry.holder) == ("updated", "in-use", "alice")
            port.emit(PeerClosed(reason="unplugged"))
            event = await _event(browser, identity.id_string)
            assert (event.change, event.entry.state) == ("updated", "offline")
            task.cancel()
            event = await _event(browser, identity.id_string)
            assert event.change == "removed"  # goodbye packets, not a cache expiry
    await shared.aclose()


@aio
async def test_publisher_without_anything_to_do_returns() -> None:
    publisher = _publisher("0.0.0.0", mdns=False)
    async with asyncio.timeout(5):
        await publisher.run()


@aio
async def test_queued_answers_get_the_updated_txt() -> None:
    """An answer python-zeroconf queued before a TXT update must not go out with the old state."""
    from zeroconf import IPVersion
    from zeroconf._handlers.answers import AnswerGroup
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    def info(state: str) -> AsyncServiceInfo:
        name = f"gps @ ms-q.{mdns.SERVICE_TYPE}"
        return AsyncServiceInfo(
            mdns.SERVICE_TYPE, name, port=1, properties={"state": state}, server="ms-q.local.",
            parsed_addresses=["127.0.0.1"],
        )  # fmt: skip

    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        zc = aiozc.zeroconf
        old, new = info("free"), info("in-use")
        zc.out_delay_queue.queue.append(AnswerGroup(0, 0, {old.dns_pointer(): {old.dns_text()}}))
        zc.out_queue.queue.append(AnswerGroup(0, 0, {old.dns_text(): set()}))
        zc_plumbing.refresh_queued_answers(zc, new)
        (delayed,) = zc.out_delay_queue.queue[0].answers.values()
        assert [r.text for r in delayed] == [new.dns_text().text]  # type: ignore[attr-defined]
        assert [r.text for r in zc.out_queue.queue[0].answers] == [new.dns_text().text]  # type: ignore[attr-defined]
        zc.out_delay_queue.queue.clear()
        zc.out_queue.queue.clear()
    finally:
        await aiozc.async_close()
