"""The rendezvous against clients that lie about their address, mint identities, or ask for everything.

Every request here comes from loopback, as it would from a local user or from anything a reverse proxy on
the same host forwards.  ``X-Forwarded-For`` is free text: unless the peer is a proxy the operator named, it
must not choose the bucket a request is counted in, nor the address a record is accounted to.  One address
may keep live records for a bounded number of identities, and a listing of thousands of records comes in
pages a client can swallow, which the client follows to the end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from pathlib import Path

import nacl.signing
import pytest

from meshserial.discovery.rendezvous import fetch_records
from meshserial.proto import records
from meshserial.rendezvous import DEFAULT_MAX_IDS_PER_SOURCE
from meshserial.rendezvous.app import Settings
from meshserial.rendezvous.store import PAGE_BYTES
from tests.rendezvous.conftest import T0, FakeClock, Server, async_test, envelope, running, with_settings

LOOPBACK_PROXY = (ipaddress.ip_network("127.0.0.1/32"),)
MB = 1_000_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path, clock: FakeClock) -> Settings:
    """Defaults, except a private database and the fake clock for record validity."""
    return Settings(db_path=tmp_path / "rdv.sqlite3", clock=clock, sweep_interval=3600)


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(n.to_bytes(32, "big"))


def random_forwarded(rng: random.Random) -> str:
    """What an attacker might put in the header: IPv4, IPv6, chains, junk."""
    choice = rng.randrange(4)
    if choice == 0:
        return str(ipaddress.IPv4Address(rng.getrandbits(32)))
    if choice == 1:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    if choice == 2:
        return f"{ipaddress.IPv4Address(rng.getrandbits(32))}, {ipaddress.IPv4Address(rng.getrandbits(32))}"
    return rng.choice(["unknown", "", "::ffff:1.2.3.4", "1.2.3.4:80", "x" * 100])


async def post(server: Server, body: bytes, forwarded: str | None = None) -> tuple[int, str]:
    """POST a record; return the status and the error code ('' on success)."""
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    async with server.session.post(server.records_url, data=body, headers=headers) as response:
        answer = await response.read()
        return response.status, json.loads(answer)["error"] if answer else ""


@async_test
async def test_random_forwarded_for_from_loopback_does_not_spread_the_rate_limit(settings: Settings) -> None:
    rng = random.Random(7)
    bodies = [envelope(key(n), names=(f"p{n}",)) for n in range(2000)]
    limit = asyncio.Semaphore(16)

    async def one(body: bytes) -> tuple[int, str]:
        async with limit:
            return await post(server, body, random_forwarded(rng))

    async with running(settings) as server:
        started = time.monotonic()
        results = await asyncio.gather(*(one(body) for body in bodies))
        elapsed = time.monotonic() - started
        accepted = sum(1 for status, _ in results if status == 204)
        # One bucket for all of loopback: the burst, plus what refills while the test runs.
        assert accepted <= settings.write_burst + settings.write_rate * elapsed + 1, (accepted, elapsed)
        assert sum(1 for result in results if result == (429, "rate-limited")) >= 1900
        assert {status for status, _ in results} <= {204, 429}

        # Reads as well: the header does not buy a fresh bucket per request.
        statuses = []
        started = time.monotonic()
        for _ in range(200):
            async with server.session.get(
                server.records_url, headers={"X-Forwarded-For": random_forwarded(rng)}
            ) as response:
                await response.read()
                statuses.append(response.status)
        elapsed = time.monotonic() - started
        assert statuses.count(200) <= settings.read_burst + settings.read_rate * elapsed + 1


@async_test
async def test_a_trusted_proxys_forwarded_for_is_honoured(settings: Settings) -> None:
    limited = with_settings(settings, trusted_proxies=LOOPBACK_PROXY, write_burst=1, write_rate=0.001)
    async with running(limited) as server:
        assert await post(server, envelope(key(1)), "198.51.100.1") == (204, "")
        assert await post(server, envelope(key(2)), "198.51.100.1") == (429, "rate-limited")
        # The proxy appends the address it saw; what the client wrote to the left of it is ignored.
        assert await post(server, envelope(key(3)), "198.51.100.1, 198.51.100.2") == (204, "")
        assert await post(server, envelope(key(4)), "198.51.100.2, 198.51.100.1") == (429, "rate-limited")
        # A second trusted hop (a local load balancer) is skipped: the client is the first untrusted one.
        assert await post(server, envelope(key(5)), "198.51.100.3, 127.0.0.1") == (204, "")
        assert await post(server, envelope(key(6)), "::ffff:198.51.100.3") == (429, "rate-limited")
        # IPv6 clients share a bucket per /64.
        assert await post(server, envelope(key(7)), "2001:db8:1:2::1") == (204, "")
        assert await post(server, envelope(key(8)), "2001:db8:1:2:ffff::9") == (429, "rate-limited")
        # Junk from the proxy stops at the proxy itself: one bucket for all junk, not one per spelling.
        assert await post(server, envelope(key(9)), "junk") == (204, "")
        assert await post(server, envelope(key(10)), "other junk") == (429, "rate-limited")
    # A proxy that is not named is not believed, even on loopback.
    async with running(with_settings(limited, trusted_proxies=())) as server:
        assert await post(server, envelope(key(11), seq=2), "203.0.113.1") == (204, "")
        assert await post(server, envelope(key(12), seq=2), "203.0.113.2") == (429, "rate-limited")


@async_test
async def test_one_source_cannot_register_more_than_its_quota_of_identities(
    settings: Settings, clock: FakeClock
) -> None:
    cap = DEFAULT_MAX_IDS_PER_SOURCE
    unlimited = with_settings(settings, rate_limit=False, trusted_proxies=LOOPBACK_PROXY)
    async with running(unlimited) as server:
        for n in range(cap):
            assert await post(server, envelope(key(n), expires=T0 + 600 + n)) == (204, "")
        async with server.session.post(server.records_url, data=envelope(key(cap))) as response:
            assert response.status == 429
            doc = await response.json()
            assert doc["error"] == "too-many-ids" and f"{cap} server identities" in doc["reason"]
            assert int(response.headers["Retry-After"]) == 600  # when the first of them expires
        # Re-registering an identity it already holds is always allowed.
        assert await post(server, envelope(key(0), seq=2, expires=T0 + 3600)) == (204, "")
        # Another client behind the trusted proxy has its own quota; forging the header buys nothing.
        assert await post(server, envelope(key(cap)), "198.51.100.7") == (204, "")
        assert await post(server, envelope(key(cap + 1)), "198.51.100.8, 127.0.0.1") == (204, "")
        assert await post(server, envelope(key(cap + 2)), "127.0.0.1") == (429, "too-many-ids")
        # Many new identities at once cannot slip past the check while the first writes are in flight.
        burst = await asyncio.gather(
            *(post(server, envelope(key(1000 + n)), "198.51.100.9") for n in range(cap + 8))
        )
        assert burst.count((204, "")) == cap
        assert burst.count((429, "too-many-ids")) == 8

    # The count is rebuilt from the table: a restart does not reset it.
    async with running(unlimited) as server:
        assert await post(server, envelope(key(cap + 2))) == (429, "too-many-ids")
        assert (await server.delete(records.sign_delete(key(5), seq=1, ts=int(T0)))).status == 204
        assert await post(server, envelope(key(cap + 2))) == (204, "")  # a withdrawn one frees a place
        assert await post(server, envelope(key(cap + 3))) == (429, "too-many-ids")
        clock.now = T0 + 601  # ... and so does one that expired (key 1's record, sweep or not)
        assert await post(server, envelope(key(cap + 3))) == (204, "")


async def _post_all(server: Server, bodies: list[bytes]) -> None:
    queue = iter(bodies)

    async def worker() -> None:
        for body in queue:
            assert await post(server, body) == (204, "")

    async with asyncio.TaskGroup() as tasks:
        for _ in range(16):
            tasks.create_task(worker())


def big_envelope(n: int, *, seq: int = 1) -> bytes:
    """A record near the 4096-byte limit (32 ports), as a busy server would publish."""
    ports = [
        records.PortInfo(name=f"port-{i:02d}", device=f"/dev/serial/by-id/usb-FTDI_{n:05d}_{i:02d}")
        for i in range(32)
    ]
    return records.sign_record(
        key(n), seq=seq, expires=int(T0 + 3600), ports=ports, addresses=[f"10.0.{n >> 8}.{n & 255}:7217"]
    )


@async_test
async def test_a_2000_record_listing_comes_in_pages_under_a_megabyte(settings: Settings) -> None:
    bodies = [big_envelope(n) for n in range(2000)]
    assert sum(len(body) for body in bodies) > 6 * MB  # all at once, this listing was one 7 MB answer
    roomy = with_settings(settings, rate_limit=False, max_ids_per_source=5000)
    async with running(roomy) as server:
        await _post_all(server, bodies)
        expected = {records.b64url_encode(bytes(key(n).verify_key)) for n in range(2000)}
        for query in ("", "limit=1000"):
            seen: list[str] = []
            cursor: str | None = None
            for _ in range(100):
                url = f"{server.records_url}?{query}" + (f"&cursor={cursor}" if cursor else "")
                async with server.session.get(url) as response:
                    assert response.status == 200
                    body = await response.read()
                assert len(body) <= PAGE_BYTES + records.MAX_ENVELOPE_SIZE < MB
                page = json.loads(body)
                seen += [json.loads(records.b64url_decode(e["record"]))["id"] for e in page["records"]]
                cursor = page["next"]
                if cursor is None:
                    break
            assert len(seen) == len(set(seen)) == 2000 and set(seen) == expected
            raw = [records.b64url_decode(i) for i in seen]
            assert raw == sorted(raw)  # in id order, which is what keeps a walk stable under writes

        found = await fetch_records(server.url, session=server.session, now=T0, timeout=20)
        assert {r.id_b64 for r in found} == expected


@async_test
async def test_a_walk_through_the_pages_is_stable_under_concurrent_writes(settings: Settings) -> None:
    roomy = with_settings(settings, rate_limit=False, max_ids_per_source=5000)
    async with running(roomy) as server:
        await _post_all(server, [big_envelope(n) for n in range(600)])
        stays = {records.b64url_encode(bytes(key(n).verify_key)) for n in range(0, 600, 2)}
        seen: list[str] = []
        cursor: str | None = None
        arrivals, withdrawals = iter(range(600, 10_000)), iter(range(599, 0, -2))
        for page_number in range(100):
            async with server.session.get(
                server.records_url, params={"limit": "50", **({"cursor": cursor} if cursor else {})}
            ) as response:
                page = json.loads(await response.read())
            seen += [json.loads(records.b64url_decode(e["record"]))["id"] for e in page["records"]]
            # Between pages: new identities arrive, odd ones are withdrawn, some even ones refresh.
            for n in [next(arrivals) for _ in range(5)]:
                assert await post(server, big_envelope(n)) == (204, "")
            for n in [next(withdrawals) for _ in range(25)]:
                assert (await server.delete(records.sign_delete(key(n), seq=1, ts=int(T0)))).status == 204
            for n in range(page_number % 4 * 2, 600, 60):
                assert await post(server, big_envelope(n, seq=page_number + 2)) == (204, "")
            cursor = page["next"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))  # nothing twice
        assert stays <= set(seen)  # nothing that stayed live was skipped
