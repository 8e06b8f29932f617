"""Fixtures for the rendezvous tests: a real aiohttp server on loopback, a fake clock, signed records.

No pytest-aiohttp: each test is a plain function running its coroutine with :func:`async_test`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec

import aiohttp
import nacl.signing
import pytest
from aiohttp import web

from meshserial.proto import records
from meshserial.rendezvous.app import STORE_KEY, Settings, make_app
from meshserial.rendezvous.store import RecordStore

P = ParamSpec("P")
T0 = 1_800_000_000.0


def async_test(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an ``async def`` test in a fresh event loop, bounded to 30 s."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(30):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def records_url(self) -> str:
        return self.url + "/v1/records"

    @property
    def store(self) -> RecordStore:
        return self.app[STORE_KEY]

    async def post(self, body: bytes, **headers: str) -> aiohttp.ClientResponse:
        async with self.session.post(self.records_url, data=body, headers=headers) as response:
            await response.read()
            return response

    async def delete(self, body: bytes, **headers: str) -> aiohttp.ClientResponse:
        async with self.session.delete(self.records_url, data=body, headers=headers) as response:
            await response.read()
            return response

    async def get(self, query: str = "", **headers: str) -> tuple[int, Any]:
        async with self.session.get(self.records_url + query, headers=headers) as response:
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, app: web.Application | None = None, *, port: int = 0
) -> AsyncIterator[Server]:
    """Serve ``make_app(settings)`` on 127.0.0.1 (ephemeral port) with a client session; clean up after."""
    app = app if app is not None else make_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            yield Server(url=f"http://127.0.0.1:{port}", app=app, session=session)
    finally:
        await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path, clock: FakeClock) -> Settings:
    """Test settings: a private database, the fake clock, rate limits off (one test turns them on)."""
    return Settings(db_path=tmp_path / "rdv.sqlite3", clock=clock, rate_limit=False, sweep_interval=3600)


@pytest.fixture
def key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes(range(32)))


def envelope(
    key: nacl.signing.SigningKey,
    *,
    seq: int = 1,
    expires: float = T0 + 3600,
    names: tuple[str, ...] = ("gps",),
    addresses: tuple[str, ...] = ("10.0.0.5:7000",),
) -> bytes:
    ports = [records.PortInfo(name=n, device=f"/dev/tty{n}") for n in names]
    return records.sign_record(key, seq=seq, expires=int(expires), ports=ports, addresses=addresses)


def with_settings(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
