"""The rendezvous client: verified fetches, and the Registrar's refresh, backoff and withdrawal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import nacl.signing
import pytest
from aiohttp import web

from meshserial.discovery.rendezvous import Registrar, addresses_for, fetch_records, records_url
from meshserial.errors import ConnectError, NetworkError, ProtocolError, Refused, UsageError
from meshserial.proto import records
from meshserial.proto.records import PortInfo
from meshserial.rendezvous.app import Settings
from tests.helpers import free_tcp_port

from .conftest import T0, async_test, envelope, running, with_settings

PORTS = [PortInfo(name="gps", device="/dev/ttyUSB0")]
ADDRS = ["127.0.0.1:7000"]


def k(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


@pytest.fixture
def live(settings: Settings) -> Settings:
    """Server settings on the real clock, as the Registrar signs with real time."""
    return with_settings(settings, clock=time.time)


class Canned:
    """A hostile or broken 'rendezvous' that answers whatever the test wants, ignoring filters."""

    def __init__(self, status: int = 200, body: bytes = b'{"records":[]}') -> None:
        self.status, self.body = status, body

    async def __call__(self, request: web.Request) -> web.Response:
        return web.Response(status=self.status, body=self.body, content_type="application/json")


@contextlib.asynccontextmanager
async def canned_server(canned: Canned) -> AsyncIterator[str]:
    async def handler(request: web.Request) -> web.Response:
        return await canned(request)

    app = web.Application()
    app.router.add_get("/v1/records", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@async_test
async def test_fetch_verifies_filters_and_keeps_the_newest(caplog: pytest.LogCaptureFixture) -> None:
    good_old = envelope(k(1), seq=1, names=("gps",))
    good_new = envelope(k(1), seq=2, names=("gps",))
    other = envelope(k(2), seq=1, names=("modem",))
    forged = json.loads(envelope(k(3)))
    forged["sig"] = json.loads(other)["sig"]
    expired = envelope(k(4), expires=T0 - 1)
    items = [json.loads(e) for e in (good_old, good_new, other, expired)] + [forged, forged, 7, "x"]
    canned = Canned(body=json.dumps({"records": items}).encode())
    caplog.set_level(logging.WARNING, "meshserial.discovery.rendezvous")
    async with canned_server(canned) as url:
        found = await fetch_records(url, now=T0)
        assert sorted((r.server_id, r.seq) for r in found) == sorted(
            [(bytes(k(1).verify_key), 2), (bytes(k(2).verify_key), 1)]
        )
        # The service ignored our filters; the client applies them itself.
        only = await fetch_records(url + "/", id=records.b64url_encode(bytes(k(2).verify_key)), now=T0)
        assert [r.envelope for r in only] == [other]
        assert [r.envelope for r in await fetch_records(url, name="gps", now=T0)] == [good_new]
        assert await fetch_records(url, id=bytes(k(9).verify_key), now=T0) == []
    bad_sig = [r for r in caplog.records if "bad signature" in r.getMessage()]
    assert len(bad_sig) == 1  # logged once per source and reason, not per record or per fetch


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, b"{}", Refused),
        (403, b"{}", Refused),
        (500, b"{}", NetworkError),
        (429, b"{}", NetworkError),
        (200, b"not json", ProtocolError),
        (200, b'{"records": 1}', ProtocolError),
        (200, b"[]", ProtocolError),
    ],
)
@async_test
async def test_fetch_errors(status: int, body: bytes, error: type[Exception]) -> None:
    async with canned_server(Canned(status, body)) as url:
        with pytest.raises(error):
            await fetch_records(url)


@async_test
async def test_fetch_unreachable_and_bad_arguments() -> None:
    with pytest.raises(ConnectError):
        await fetch_records(f"http://127.0.0.1:{free_tcp_port()}", timeout=2)
    with pytest.raises(UsageError):
        await fetch_records("http://127.0.0.1:1", id="not base64!")
    with pytest.raises(UsageError):
        await fetch_records("http://127.0.0.1:1", id=b"short")


def test_small_helpers() -> None:
    assert records_url("https://r.example/") == "https://r.example/v1/records"
    assert records_url("https://r.example/v1/records") == "https://r.example/v1/records"
    assert addresses_for(["10.0.0.1", "fd00::1"], 7000) == ["10.0.0.1:7000", "[fd00::1]:7000"]
    with pytest.raises(UsageError):
        Registrar("http://x", k(1), ports=PORTS, addresses=ADDRS, ttl=1)
    with pytest.raises(UsageError):
        Registrar("http://x", k(1), ports=PORTS, addresses=["localhost:7000"])
    with pytest.raises(UsageError):
        Registrar("http://x", k(1), ports=PORTS, addresses=ADDRS, min_backoff=0)


@async_test
async def test_registrar_registers_refreshes_and_withdraws(live: Settings) -> None:
    async with running(live) as server:
        registrar = Registrar(server.url, k(1), ports=PORTS, addresses=ADDRS, ttl=2, session=server.session)
        async with asyncio.TaskGroup() as tg:
            registrar.start(tg)
            await registrar.wait_until(lambda r: r.successes >= 1, timeout=5)
            first = registrar.registered_seq
            assert first is not None
            found = await fetch_records(server.url, session=server.session)
            assert [(r.seq, r.addresses) for r in found] == [(first, tuple(ADDRS))]
            await registrar.wait_until(lambda r: r.successes >= 3, timeout=10)  # refreshed at ~TTL/2
            assert registrar.registered_seq is not None and registrar.registered_seq > first
            assert all(0.5 <= d <= 1.0 for d in registrar.delays)
            await registrar.aclose()
        assert await fetch_records(server.url, session=server.session) == []
        await registrar.aclose()  # idempotent


@async_test
async def test_registrar_backs_off_then_recovers(live: Settings) -> None:
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    async with Registrar(url, k(1), ports=PORTS, addresses=ADDRS, min_backoff=0.02, max_backoff=0.3) as reg:
        await reg.wait_until(lambda r: r.failures >= 5, timeout=10)
        assert reg.successes == 0 and reg.last_error
        delays = reg.delays[:5]
        assert delays == sorted(delays)  # equal jitter: each wait at least the previous cap
        assert 0.01 <= delays[0] <= 0.02 and delays[4] <= 0.3
        async with running(live, port=port) as server:
            await reg.wait_until(lambda r: r.successes >= 1, timeout=10)
            assert reg.failures == 0 and reg.last_error is None
            assert len(await fetch_records(server.url, session=server.session)) == 1
            await reg.aclose()
            assert await fetch_records(server.url, session=server.session) == []


@async_test
async def test_registrar_resyncs_seq_after_409(live: Settings) -> None:
    ahead = int(time.time() * 1000) + 10**9
    async with running(live) as server:
        assert (await server.post(envelope(k(1), seq=ahead, expires=time.time() + 60))).status == 204
        reg = Registrar(server.url, k(1), ports=PORTS, addresses=ADDRS, session=server.session)
        async with asyncio.TaskGroup() as tg:
            reg.start(tg)
            await reg.wait_until(lambda r: r.successes >= 1, timeout=5)
            assert reg.registered_seq == ahead + 1
            await reg.aclose()


@async_test
async def test_registrar_update_and_retry_after(live: Settings) -> None:
    limited = with_settings(live, rate_limit=True, write_burst=2, write_rate=0.5)
    async with running(limited) as server:
        reg = Registrar(
            server.url, k(1), ports=PORTS, addresses=ADDRS, session=server.session, min_backoff=0.01
        )
        async with asyncio.TaskGroup() as tg:
            reg.start(tg)
            await reg.wait_until(lambda r: r.successes >= 1, timeout=5)
            reg.update(ports=[PortInfo(name="plc", device="/dev/ttyS1", state=records.PortState.IN_USE)])
            await reg.wait_until(lambda r: r.successes >= 2, timeout=5)
            (rec,) = await fetch_records(server.url, session=server.session)
            assert rec.names == {"plc"} and rec.ports[0].state is records.PortState.IN_USE
            reg.update(addresses=["127.0.0.2:7000"])  # the bucket is empty now: 429 + Retry-After: 2
            await reg.wait_until(lambda r: r.failures >= 1, timeout=5)
            assert reg.last_error == "HTTP 429: too many requests"
            assert reg.delays[-1] >= 2
            await reg.aclose()
