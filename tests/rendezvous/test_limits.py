"""Client addresses behind proxies, the per-source quota, pages and cursors, and the schema upgrade."""

from __future__ import annotations

import ipaddress
import json
import logging
import sqlite3
from pathlib import Path

import nacl.signing
import pytest

from meshserial.errors import ConfigError
from meshserial.proto import records
from meshserial.rendezvous.app import IPNetwork, Settings, client_address, make_app, source_key
from meshserial.rendezvous.store import (
    MAX_PAGE,
    SCHEMA_VERSION,
    PutOutcome,
    RecordStore,
    decode_cursor,
    encode_cursor,
)

from .conftest import T0, FakeClock, Server, async_test, envelope, running, with_settings


def k(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(n.to_bytes(32, "big"))


def id_of(n: int) -> bytes:
    return bytes(k(n).verify_key)


def nets(*texts: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


PROXIES = nets("127.0.0.1/32", "10.1.0.0/16", "fd00::/64")


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.1", [], (), "198.51.100.1"),
        ("127.0.0.1", ["203.0.113.9"], (), "127.0.0.1"),  # no trusted proxy: the header means nothing
        ("198.51.100.1", ["203.0.113.9"], PROXIES, "198.51.100.1"),  # not from a proxy
        ("127.0.0.1", ["203.0.113.9"], PROXIES, "203.0.113.9"),
        ("127.0.0.1", [], PROXIES, "127.0.0.1"),
        ("127.0.0.1", ["1.1.1.1, 2.2.2.2, 203.0.113.9"], PROXIES, "203.0.113.9"),  # the right-most
        ("127.0.0.1", ["203.0.113.9, 10.1.2.3"], PROXIES, "203.0.113.9"),  # proxies are skipped
        ("127.0.0.1", ["203.0.113.9", "10.1.2.3"], PROXIES, "203.0.113.9"),  # two header lines
        ("127.0.0.1", ["10.1.2.3, 127.0.0.1"], PROXIES, "10.1.2.3"),  # all trusted: the left-most
        ("127.0.0.1", ["203.0.113.9, junk"], PROXIES, "127.0.0.1"),  # junk stops at the last proxy
        ("127.0.0.1", ["203.0.113.9, 10.1.2.3, "], PROXIES, "127.0.0.1"),
        ("127.0.0.1", ["203.0.113.9:4711"], PROXIES, "127.0.0.1"),  # a port is not an address
        ("127.0.0.1", [" 2001:db8::7 "], PROXIES, "2001:db8::7"),
        ("127.0.0.1", ["::ffff:203.0.113.9"], PROXIES, "203.0.113.9"),
        ("::ffff:127.0.0.1", ["203.0.113.9"], PROXIES, "203.0.113.9"),  # a dual-stack listener
        ("fd00::5", ["203.0.113.9"], PROXIES, "203.0.113.9"),
        ("127.0.0.1", ["203.0.113.9, " + "10.1.0.1, " * 20 + "127.0.0.1"], PROXIES, "10.1.0.1"),
        (None, ["203.0.113.9"], PROXIES, None),
        ("not-an-ip", ["203.0.113.9"], PROXIES, None),
    ],
)
def test_client_address(
    remote: str | None, forwarded: list[str], trusted: tuple[IPNetwork, ...], expected: str | None
) -> None:
    found = client_address(remote, forwarded, trusted)
    assert (None if found is None else str(found)) == expected


def test_source_key_groups_ipv6_by_64() -> None:
    assert source_key(ipaddress.ip_address("2001:db8:1:2:3:4:5:6")) == "2001:db8:1:2::/64"
    assert source_key(ipaddress.ip_address("198.51.100.1")) == "198.51.100.1"
    assert source_key(None) == "unknown"


@async_test
async def test_an_ignored_forwarded_for_is_pointed_out_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshserial.rendezvous.app")
    limited = with_settings(settings, rate_limit=True)
    async with running(with_settings(limited, trusted_proxies=nets("10.0.0.0/8"))) as server:
        for n in range(3):
            assert (await server.get(**{"X-Forwarded-For": f"198.51.100.{n}"}))[0] == 200
    hints = [r.getMessage() for r in caplog.records if "X-Forwarded-For" in r.getMessage()]
    assert hints == [
        "rendezvous: ignoring X-Forwarded-For from 127.0.0.1; if that is your reverse proxy, "
        "start with --trust-proxy 127.0.0.1"
    ]
    caplog.clear()
    async with running(with_settings(limited, trusted_proxies=nets("127.0.0.1/32"))) as server:
        assert (await server.get(**{"X-Forwarded-For": "junk"}))[0] == 200
    assert not [r for r in caplog.records if "X-Forwarded-For" in r.getMessage()]


def test_cursor_round_trip_and_refusals() -> None:
    assert decode_cursor(encode_cursor(id_of(1))) == id_of(1)
    for text in ("", "AAAA", "A" * 43 + "=", "!" * 43, "A" * 44):
        with pytest.raises(ValueError):
            decode_cursor(text)


async def walk(server: Server, query: str = "", limit: int = 2) -> tuple[list[bytes], int]:
    """Follow the pages of a listing; return the ids in the order received and the number of pages."""
    ids: list[bytes] = []
    cursor: str | None = None
    for pages in range(1, 100):
        status, doc = await server.get(f"?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200 and set(doc) == {"records", "next"}
        assert len(doc["records"]) <= limit
        ids += [records.verify_envelope(e, now=T0).server_id for e in doc["records"]]
        cursor = doc["next"]
        if cursor is None:
            return ids, pages
    raise AssertionError("the pages do not end")


@async_test
async def test_pages_follow_id_order_and_combine_with_filters(settings: Settings) -> None:
    async with running(settings) as server:
        for n in range(7):
            names = ("gps", f"p{n}") if n % 2 else (f"p{n}",)
            assert (await server.post(envelope(k(n), names=names))).status == 204
        every = sorted(id_of(n) for n in range(7))
        assert await walk(server) == (every, 4)  # 2+2+2+1: no empty page at the end
        assert await walk(server, limit=7) == (every, 1)
        assert await walk(server, limit=MAX_PAGE * 10) == (every, 1)  # above the maximum: clamped
        assert await walk(server, "&name=gps") == (sorted(id_of(n) for n in (1, 3, 5)), 2)
        assert await walk(server, "&name=p4") == ([id_of(4)], 1)
        one = records.b64url_encode(id_of(3))
        assert await walk(server, f"&id={one}") == ([id_of(3)], 1)
        # A cursor past the only match, or past everything, is simply the end.
        status, doc = await server.get(f"?id={one}&cursor={encode_cursor(id_of(3))}")
        assert (status, doc) == (200, {"records": [], "next": None})
        status, doc = await server.get("?cursor=" + encode_cursor(bytes([255]) * 32))
        assert (status, doc) == (200, {"records": [], "next": None})
        # Without a limit, the default page holds all seven.
        status, doc = await server.get()
        assert len(doc["records"]) == 7 and doc["next"] is None
        # A cursor naming a record that has gone since is still a position: the walk goes on after it.
        status, first = await server.get("?limit=3")
        gone = records.verify_envelope(first["records"][-1], now=T0).server_id
        n = next(n for n in range(7) if id_of(n) == gone)
        assert (await server.delete(records.sign_delete(k(n), seq=1, ts=int(T0)))).status == 204
        status, rest = await server.get(f"?limit=10&cursor={first['next']}")
        assert [records.verify_envelope(e, now=T0).server_id for e in rest["records"]] == every[3:]


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=-1",
        "?limit=",
        "?limit=ten",
        "?limit=1e3",
        "?limit=+5",
        "?limit=%D9%A1",  # an Arabic-Indic one: a digit to str.isdigit, not to us
        "?limit=" + "9" * 10,
        "?limit=" + "9" * 5000,
        "?limit=1&limit=2",
        "?cursor=",
        "?cursor=AAAA",
        "?cursor=" + "A" * 43 + "=",
        "?cursor=%00",
        "?cursor=a&cursor=b",
    ],
)
@async_test
async def test_malformed_page_queries_are_json_400(settings: Settings, query: str) -> None:
    async with running(settings) as server, server.session.get(server.records_url + query) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "bad-query"


@async_test
async def test_expired_records_are_skipped_in_pages_before_the_sweep(
    settings: Settings, clock: FakeClock
) -> None:
    async with running(settings) as server:
        for n in range(6):
            assert (await server.post(envelope(k(n), expires=T0 + 100 + n % 2 * 1000))).status == 204
        clock.now = T0 + 100
        ids, _ = await walk(server)
        assert ids == sorted(id_of(n) for n in (1, 3, 5))


@async_test
async def test_quota_counts_live_identities_per_source(tmp_path: Path) -> None:
    store = await RecordStore.open(
        tmp_path / "db", max_ttl=86400, max_records=100, max_ids_per_source=2, now=T0
    )
    try:

        def record(n: int, seq: int = 1, expires: float = T0 + 100) -> records.Record:
            return records.verify_envelope(envelope(k(n), seq=seq, expires=expires), now=T0)

        assert await store.put(record(1), source="a", now=T0) is PutOutcome.STORED
        assert await store.put(record(2, expires=T0 + 50), source="a", now=T0) is PutOutcome.STORED
        assert await store.put(record(3), source="a", now=T0) is PutOutcome.TOO_MANY_IDS
        assert await store.put(record(1, seq=1), source="a", now=T0) is PutOutcome.STALE  # stale first
        assert await store.put(record(1, seq=2), source="a", now=T0) is PutOutcome.STORED
        assert store.next_expiry("a", T0) == T0 + 50 and store.next_expiry("b", T0) is None
        # Moving an identity to another source counts there, and frees its place here.
        assert await store.put(record(2, seq=2), source="b", now=T0) is PutOutcome.STORED
        assert (store.ids_of("a", T0), store.ids_of("b", T0)) == (1, 1)
        assert await store.put(record(3), source="a", now=T0) is PutOutcome.STORED
        assert await store.put(record(4, expires=T0 + 200), source="a", now=T0 + 100) is PutOutcome.STORED
        assert store.ids_of("a", T0 + 100) == 1  # 1 and 3 expired, sweep or not
    finally:
        await store.aclose()


def _old_database(path: Path, env: bytes, seq: int) -> None:
    """A database as schema 1 left it: no source column, user_version 1."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE records (
            id BLOB PRIMARY KEY, seq INTEGER NOT NULL, expires INTEGER NOT NULL,
            retain_until REAL NOT NULL, envelope BLOB, names TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX records_retain ON records(retain_until);
        PRAGMA user_version=1;
        """
    )
    record = records.verify_envelope(env, now=T0)
    conn.execute(
        "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.server_id,
            seq,
            record.expires,
            T0 + 86400,
            record.envelope,
            json.dumps(sorted(record.names)),
        ),
    )
    conn.execute(
        "INSERT INTO records VALUES (?, ?, ?, ?, NULL, '[]')", (id_of(2), 50, int(T0) - 10, T0 + 1000)
    )
    conn.commit()
    conn.close()


@async_test
async def test_a_schema_1_database_is_upgraded_in_place(settings: Settings) -> None:
    assert settings.db_path is not None
    old = envelope(k(1), seq=7, names=("gps",))
    _old_database(settings.db_path, old, 7)
    quota_of_one = with_settings(settings, max_ids_per_source=1)
    async with running(quota_of_one) as server:
        status, doc = await server.get()
        assert status == 200 and [json.dumps(e, separators=(",", ":")).encode() for e in doc["records"]] == [
            old
        ]
        assert (await server.post(envelope(k(1), seq=7))).status == 409  # the seq came along
        assert (await server.post(envelope(k(2), seq=50))).status == 409  # ... and the tombstone's
        # Old rows count for nobody: this address may still register one identity of its own ...
        assert (await server.post(envelope(k(3)))).status == 204
        assert (await server.post(envelope(k(4)))).status == 429
        # ... and the old record is refreshed, never refused for quota, and is then accounted here.
        assert (await server.post(envelope(k(1), seq=8))).status == 204
        assert server.store.ids_of("127.0.0.1", T0) == 2
    conn = sqlite3.connect(settings.db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        rows = dict(conn.execute("SELECT seq, source FROM records").fetchall())
        assert rows == {8: "127.0.0.1", 50: "", 1: "127.0.0.1"}
    finally:
        conn.close()


@async_test
async def test_a_newer_schema_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="newer schema"):
        async with running(Settings(db_path=path, clock=clock)):
            pass


def test_settings_must_allow_one_identity_per_source() -> None:
    with pytest.raises(ConfigError):
        make_app(Settings(max_ids_per_source=0))
