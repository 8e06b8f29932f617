"""The rendezvous client: verified fetches, and the Registrar's refresh, backoff and withdrawal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nacl.signing
import pytest
from aiohttp import web

from meshserial.discovery import rendezvous as client
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
        self.requests = 0

    async def __call__(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=self.status, body=self.body, content_type="application/json")


class Paged:
    """A 'rendezvous' that hands out ``items`` a few per page, with cursors of its own making.

    ``pages`` maps a page number to a replacement answer (a status, or a document) to break that page.
    """

    def __init__(self, items: list[Any], *, size: int = 2, pages: dict[int, Any] | None = None) -> None:
        self.items, self.size, self.pages = items, size, pages or {}
        self.queries: list[dict[str, str]] = []
        self.release = asyncio.Event()  # a page answered with "hang" waits for this

    async def __call__(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        cursor = request.query.get("cursor")
        number = 0 if cursor is None else int(cursor.removeprefix("page-"))
        start = number * self.size
        more = start + self.size < len(self.items)
        doc: Any = {
            "records": self.items[start : start + self.size],
            "next": f"page-{number + 1}" if more else None,
        }
        special = self.pages.get(number)
        if special == "hang":
            await self.release.wait()
        elif isinstance(special, int):
            return web.Response(status=special)
        elif special is not None:
            doc = special
        return web.json_response(doc)


@contextlib.asynccontextmanager
async def canned_server(canned: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
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


def items(*envelopes: bytes) -> list[Any]:
    return [json.loads(e) for e in envelopes]


@async_test
async def test_fetch_follows_the_pages_to_the_end() -> None:
    old, new = envelope(k(1), seq=1), envelope(k(1), seq=2)
    others = [envelope(k(n), names=("gps", "plc")) for n in range(2, 7)]
    paged = Paged(items(old, *others, new))
    async with canned_server(paged) as url:
        found = await fetch_records(url, name="gps", now=T0)
    assert sorted(r.envelope for r in found) == sorted([new, *others])  # the newest seq of k(1) wins
    assert [q.get("cursor") for q in paged.queries] == [None, "page-1", "page-2", "page-3"]
    assert all(q["name"] == "gps" and q["limit"] == str(client.PAGE_LIMIT) for q in paged.queries)


@async_test
async def test_fetch_from_a_service_that_sends_no_next() -> None:
    canned = Canned(body=json.dumps({"records": items(envelope(k(1)), envelope(k(2)))}).encode())
    async with canned_server(canned) as url:
        assert len(await fetch_records(url, now=T0)) == 2
    assert canned.requests == 1


@pytest.mark.parametrize("cursor", [7, "", "x" * 513, "a\x00b", "caf\u00e9", ["page-1"]])
@async_test
async def test_fetch_refuses_a_malformed_cursor(cursor: object) -> None:
    paged = Paged(items(envelope(k(1))), pages={0: {"records": [], "next": cursor}})
    async with canned_server(paged) as url:
        with pytest.raises(ProtocolError, match="cursor"):
            await fetch_records(url, now=T0)


@pytest.mark.parametrize(
    ("bound", "value", "kept"),
    [
        ("MAX_PAGES", 3, 6),  # three pages asked for and kept
        ("MAX_RECORDS", 5, 6),  # the page that passes the bound is kept, no further one is asked for
        ("MAX_RESPONSE", 1800, 4),  # the third page would pass the bound: it is not kept
    ],
)
@async_test
async def test_an_endless_listing_is_cut_short(
    bound: str, value: int, kept: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(client, bound, value)
    endless = Paged(items(*(envelope(k(n)) for n in range(1, 100))))
    assert all(340 < len(json.dumps(e)) < 360 for e in endless.items)  # two per page: ~750 bytes a page
    caplog.set_level(logging.WARNING, "meshserial.discovery.rendezvous")
    async with canned_server(endless) as url:
        found = await fetch_records(url, now=T0)
    assert len(endless.queries) == 3
    assert len(found) == kept
    assert any("listing cut short" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("trouble", [500, 429, {"records": "x"}, {"records": [], "next": 5}, "hang"])
@async_test
async def test_a_later_page_that_fails_keeps_what_came_before(
    trouble: object, caplog: pytest.LogCaptureFixture
) -> None:
    paged = Paged(items(*(envelope(k(n)) for n in range(1, 9))), pages={2: trouble})
    caplog.set_level(logging.WARNING, "meshserial.discovery.rendezvous")
    async with canned_server(paged) as url:
        try:
            found = await fetch_records(url, now=T0, timeout=2 if trouble == "hang" else 5)
        finally:
            paged.release.set()
    assert sorted(r.envelope for r in found) == sorted(envelope(k(n)) for n in range(1, 5))
    (warning,) = [r.getMessage() for r in caplog.records if "listing cut short" in r.getMessage()]
    assert "after 2 pages (4 records)" in warning


@async_test
async def test_a_repeated_cursor_ends_the_listing() -> None:
    paged = Paged(items(*(envelope(k(n)) for n in range(1, 9))), pages={1: {"records": [], "next": "page-1"}})
    async with canned_server(paged) as url:
        found = await fetch_records(url, now=T0)
    assert len(found) == 2 and len(paged.queries) == 2


@async_test
async def test_fetch_pages_through_a_real_service(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "PAGE_LIMIT", 3)
    async with running(settings) as server:
        for n in range(1, 9):
            assert (await server.post(envelope(k(n), names=("gps",) if n % 2 else ("plc",)))).status == 204
        assert len(await fetch_records(server.url, session=server.session, now=T0)) == 8
        found = await fetch_records(server.url, name="gps", session=server.session, now=T0)
        assert sorted(r.server_id for r in found) == sorted(bytes(k(n).verify_key) for n in (1, 3, 5, 7))
