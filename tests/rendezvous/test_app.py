"""The rendezvous HTTP API against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

import nacl.signing
import pytest
from aiohttp import web

from meshserial.discovery.rendezvous import fetch_records
from meshserial.errors import ConfigError, KeyFileError
from meshserial.proto import records
from meshserial.rendezvous.app import Settings, make_app, read_allow_file, read_token_file

from .conftest import T0, FakeClock, async_test, envelope, running, with_settings


def other_key(n: int = 1) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


async def raw_http(url: str, request: bytes) -> bytes:
    """Send raw bytes to the server and return everything it answers until it closes (bounded)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(65536)
    finally:
        writer.close()
        await writer.wait_closed()


def assert_json_error(
    status: int, body: bytes, expected_status: int, code: str | None = None
) -> dict[str, str]:
    assert status == expected_status, body
    doc = json.loads(body)
    assert set(doc) == {"error", "reason"}
    if code is not None:
        assert doc["error"] == code
    return doc  # type: ignore[no-any-return]


@async_test
async def test_post_then_get_returns_envelopes_verbatim(
    settings: Settings, key: nacl.signing.SigningKey
) -> None:
    env = envelope(key, names=("gps", "plc"))
    async with running(settings) as server:
        response = await server.post(env)
        assert response.status == 204
        assert response.headers["Reannounce-After"] == "1800"
        await server.post(envelope(other_key(), names=("modem",)))
        status, doc = await server.get()
        assert status == 200
        assert json.dumps(doc["records"][0], separators=(",", ":")).encode() == env
        assert len(doc["records"]) == 2
        _, doc = await server.get("?name=plc")
        assert [records.verify_envelope(e, now=T0).server_id for e in doc["records"]] == [
            bytes(key.verify_key)
        ]
        _, doc = await server.get("?name=nothing")
        assert doc == {"records": [], "next": None}
        _, doc = await server.get("?id=" + records.b64url_encode(bytes(other_key().verify_key)))
        assert len(doc["records"]) == 1
        _, doc = await server.get("?id=" + records.b64url_encode(bytes(other_key(2).verify_key)))
        assert doc == {"records": [], "next": None}
        _, doc = await server.get("?name=gps&id=" + records.b64url_encode(bytes(other_key().verify_key)))
        assert doc == {"records": [], "next": None}
        found = await fetch_records(server.url, name="gps", session=server.session, now=T0)
        assert [r.envelope for r in found] == [env]
        async with server.session.get(server.url + "/healthz") as response:
            assert await response.json() == {"status": "ok", "records": 2}


@async_test
async def test_newer_seq_replaces_and_old_seq_is_refused(
    settings: Settings, key: nacl.signing.SigningKey
) -> None:
    async with running(settings) as server:
        assert (await server.post(envelope(key, seq=5))).status == 204
        for seq in (5, 4):  # replay of the same record, rollback to an older one
            response = await server.post(envelope(key, seq=seq))
            doc = assert_json_error(response.status, response._body or b"", 409, "stale-seq")
            assert "stored seq 5" in doc["reason"]
        assert (await server.post(envelope(key, seq=6, names=("new",)))).status == 204
        _, doc = await server.get()
        assert [records.verify_envelope(e, now=T0).seq for e in doc["records"]] == [6]


@async_test
async def test_forged_expired_and_too_far(settings: Settings, key: nacl.signing.SigningKey) -> None:
    good = json.loads(envelope(key))
    forged = json.dumps({"record": good["record"], "sig": json.loads(envelope(other_key()))["sig"]}).encode()
    cases = [
        (forged, 400, "bad-signature"),
        (envelope(key, expires=T0), 400, "expired"),
        (envelope(key, expires=T0 + 86400 + 1), 400, "expiry-too-far"),
    ]
    async with running(settings) as server:
        for body, status, code in cases:
            response = await server.post(body)
            assert_json_error(response.status, response._body or b"", status, code)
        assert (await server.post(envelope(key, expires=T0 + 86400))).status == 204
        _, doc = await server.get()
        assert len(doc["records"]) == 1


@async_test
async def test_oversized_body_is_refused_before_it_is_read(settings: Settings) -> None:
    async with running(settings) as server:
        # Only the headers are sent: the answer must come without the server waiting for the promised body.
        answer = await raw_http(
            server.url,
            b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413")
        assert json.loads(body)["error"] == "too-large"

        async def chunks() -> object:  # chunked: no Content-Length, client_max_size stops it
            for _ in range(10):
                yield b"x" * 1000

        async with server.session.post(server.records_url, data=chunks()) as response:
            assert_json_error(response.status, await response.read(), 413, "too-large")
        response = await server.post(b"{" + b" " * 5000 + b"}")
        assert_json_error(response.status, response._body or b"", 413, "too-large")


@async_test
async def test_bearer_token(settings: Settings, key: nacl.signing.SigningKey) -> None:
    async with running(with_settings(settings, token="s3cret-token")) as server:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret-token"},
            {"Authorization": "Bearer"},
            {"Authorization": "s3cret-token"},
        ):
            response = await server.post(envelope(key), **headers)
            assert_json_error(response.status, response._body or b"", 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"
            response = await server.delete(records.sign_delete(key, seq=1, ts=int(T0)), **headers)
            assert response.status == 401
        assert (await server.post(envelope(key), Authorization="Bearer s3cret-token")).status == 204
        status, _ = await server.get()  # reads stay open unless protect_reads
        assert status == 200
    async with running(with_settings(settings, token="s3cret-token", protect_reads=True)) as server:
        status, doc = await server.get()
        assert status == 401
        status, doc = await server.get(Authorization="Bearer s3cret-token")
        assert status == 200 and len(doc["records"]) == 1


@async_test
async def test_allow_list(settings: Settings, key: nacl.signing.SigningKey, tmp_path: Path) -> None:
    allow = tmp_path / "allow"
    allow.write_text(f"# lab servers\n{records.b64url_encode(bytes(key.verify_key))}  # bench\n\n")
    async with running(with_settings(settings, allow_file=allow)) as server:
        response = await server.post(envelope(other_key()))
        assert_json_error(response.status, response._body or b"", 403, "forbidden")
        assert (await server.post(envelope(key))).status == 204
        response = await server.delete(records.sign_delete(other_key(), seq=1, ts=int(T0)))
        assert response.status == 403


def test_token_and_allow_files(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc123\n")
    token.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        read_token_file(token)
    token.chmod(0o600)
    assert read_token_file(token) == "abc123"
    token.write_text("\n")
    with pytest.raises(KeyFileError):
        read_token_file(token)
    with pytest.raises(KeyFileError):
        read_token_file(tmp_path / "missing")
    allow = tmp_path / "allow"
    allow.write_text("ms1qqqq\n")
    with pytest.raises(ConfigError, match="ms1"):
        read_allow_file(allow)
    allow.write_text("not-a-key\n")
    with pytest.raises(ConfigError, match=":1:"):
        read_allow_file(allow)
    with pytest.raises(ConfigError):
        read_allow_file(tmp_path / "missing")
    with pytest.raises(ConfigError):
        make_app(Settings(token="x", token_file=token))
    with pytest.raises(ConfigError):
        make_app(Settings(allowed_ids=frozenset(), allow_file=allow))


@async_test
async def test_rate_limit_answers_429_with_retry_after(
    settings: Settings, key: nacl.signing.SigningKey
) -> None:
    limited = with_settings(
        settings, rate_limit=True, write_burst=2, write_rate=0.01, read_burst=3, read_rate=0.5
    )
    async with running(limited) as server:
        assert (await server.post(envelope(key, seq=1))).status == 204
        assert (await server.post(envelope(key, seq=2))).status == 204
        response = await server.post(envelope(key, seq=3))
        assert_json_error(response.status, response._body or b"", 429, "rate-limited")
        assert 90 <= int(response.headers["Retry-After"]) <= 100
        statuses = [(await server.get())[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        async with server.session.get(server.url + "/healthz") as health:  # health checks are not limited
            assert health.status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'"x"',
        b"\xff\xfe",
        b'{"record":"AA","sig":"AA"}',
        b"{" * 2000,
        b'{"record":"A","sig":"B"}',
        b'{"delete":"AA","sig":"AA"}',
    ],
)
@async_test
async def test_malformed_bodies_are_json_400(settings: Settings, body: bytes) -> None:
    async with running(settings) as server:
        for method in ("POST", "DELETE"):
            async with server.session.request(method, server.records_url, data=body) as response:
                assert_json_error(response.status, await response.read(), 400, "malformed")


@pytest.mark.parametrize(
    "query",
    [
        "?id=",
        "?id=AAAA",
        "?id=" + "A" * 43 + "=",
        "?id=%ff",
        "?name=",
        "?name=%00",
        "?name=" + "x" * 65,
        "?name=a&name=b",
        "?id=a&id=b",
    ],
)
@async_test
async def test_malformed_queries_are_json_400(settings: Settings, query: str) -> None:
    async with running(settings) as server, server.session.get(server.records_url + query) as response:
        assert_json_error(response.status, await response.read(), 400, "bad-query")


@async_test
async def test_unknown_queries_routes_methods_and_headers(
    settings: Settings, key: nacl.signing.SigningKey
) -> None:
    async with running(with_settings(settings, token="t0ken")) as server:
        status, _ = await server.get("?whatever=1&%zz=%")
        assert status == 200
        async with server.session.get(server.url + "/v2/records") as response:
            assert_json_error(response.status, await response.read(), 404, "not-found")
        async with server.session.put(server.records_url, data=b"{}") as response:
            assert_json_error(response.status, await response.read(), 405, "method-not-allowed")
            assert "POST" in response.headers["Allow"]
        for value in ("Bearer \u00e9", "Bearer " + "x" * 8000, "Bearer t0ken t0ken", "Bearer\tt0ken"):
            async with server.session.post(
                server.records_url, data=envelope(key), headers={"Authorization": value}
            ) as response:
                assert_json_error(response.status, await response.read(), 401, "unauthorized")
        async with server.session.post(
            server.records_url,
            data=envelope(key),
            headers={"Authorization": "Bearer t0ken", "Content-Type": "x/y;;"},
        ) as response:
            assert response.status == 204  # the content type is not what we trust; the signature is
        # A request line or header the HTTP parser itself rejects gets aiohttp's plain 400, never a 500.
        for raw in (
            b"GARBAGE\r\n\r\n",
            b"GET /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/records HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n",
        ):
            answer = await raw_http(server.url, raw)
            assert answer.split(b" ", 2)[1] == b"400", answer[:100]


@async_test
async def test_unexpected_exception_becomes_json_500(settings: Settings) -> None:
    app = make_app(settings)

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("bug")

    app.router.add_get("/boom", boom)
    async with running(settings, app) as server, server.session.get(server.url + "/boom") as response:
        assert_json_error(response.status, await response.read(), 500, "internal")
        assert "bug" not in await response.text()


@async_test
async def test_records_survive_a_restart(settings: Settings, key: nacl.signing.SigningKey) -> None:
    env = envelope(key, seq=10)
    async with running(settings) as server:
        assert (await server.post(env)).status == 204
    async with running(settings) as server:
        _, doc = await server.get()
        assert json.dumps(doc["records"][0], separators=(",", ":")).encode() == env
        assert (await server.post(envelope(key, seq=9))).status == 409  # the seq survives too
        assert (await server.post(envelope(key, seq=11))).status == 204


@async_test
async def test_expired_records_vanish_and_are_swept(
    settings: Settings, clock: FakeClock, key: nacl.signing.SigningKey
) -> None:
    fast = with_settings(settings, sweep_interval=0.01)
    async with running(fast) as server:
        assert (await server.post(envelope(key, seq=1, expires=T0 + 100))).status == 204
        assert (await server.post(envelope(other_key(), seq=1, expires=T0 + 1000))).status == 204
        _, doc = await server.get()
        assert len(doc["records"]) == 2
        clock.now = T0 + 100
        _, doc = await server.get()  # hidden at once, before any sweep
        assert len(doc["records"]) == 1
        server.store.sweep_done.clear()
        async with asyncio.timeout(5):
            await server.store.sweep_done.wait()
        assert server.store.live_count(clock.now) == 1
        # The expired record is gone, but its seq still blocks a replay of anything older.
        clock.now = T0 + 50  # (an attacker cannot move our clock; this only makes an old record "valid")
        assert (await server.post(envelope(key, seq=1, expires=T0 + 100))).status == 409
        clock.now = T0 + 100
    # After the retention period (max_ttl after the last write) the row itself is forgotten.
    clock.now = T0 + 86400 + 1
    async with running(settings) as server:
        assert server.store.stored_seq(bytes(key.verify_key)) is None
        assert server.store.stored_seq(bytes(other_key().verify_key)) is None


@async_test
async def test_delete(settings: Settings, clock: FakeClock, key: nacl.signing.SigningKey) -> None:
    async with running(settings) as server:
        assert (await server.post(envelope(key, seq=5))).status == 204
        stale = await server.delete(records.sign_delete(key, seq=4, ts=int(T0)))
        assert_json_error(stale.status, stale._body or b"", 409, "stale-seq")
        old = await server.delete(records.sign_delete(key, seq=5, ts=int(T0) - 301))
        assert_json_error(old.status, old._body or b"", 400, "expired")
        body = json.loads(records.sign_delete(key, seq=5, ts=int(T0)))
        body["sig"] = json.loads(records.sign_delete(other_key(), seq=5, ts=int(T0)))["sig"]
        forged = await server.delete(json.dumps(body).encode())
        assert_json_error(forged.status, forged._body or b"", 400, "bad-signature")
        _, doc = await server.get()
        assert len(doc["records"]) == 1
        delete = records.sign_delete(key, seq=5, ts=int(T0))
        assert (await server.delete(delete)).status == 204
        _, doc = await server.get()
        assert doc == {"records": [], "next": None}
        replay = await server.delete(delete)
        assert_json_error(replay.status, replay._body or b"", 404, "not-found")
        # The tombstone keeps the seq: the deleted record cannot be replayed back in.
        assert (await server.post(envelope(key, seq=5))).status == 409
    async with running(settings) as server:  # ... even after a restart
        assert (await server.post(envelope(key, seq=5))).status == 409
        assert (await server.post(envelope(key, seq=6))).status == 204


@async_test
async def test_store_full(settings: Settings, key: nacl.signing.SigningKey) -> None:
    async with running(with_settings(settings, max_records=1)) as server:
        assert (await server.post(envelope(key))).status == 204
        response = await server.post(envelope(other_key()))
        assert_json_error(response.status, response._body or b"", 503, "full")
        assert (await server.post(envelope(key, seq=2))).status == 204  # updates still fit


@async_test
async def test_concurrent_posts_never_roll_back(settings: Settings, key: nacl.signing.SigningKey) -> None:
    async with running(settings) as server:
        results = await asyncio.gather(*(server.post(envelope(key, seq=s)) for s in range(1, 40)))
        assert any(r.status == 204 for r in results)
        assert {r.status for r in results} <= {204, 409}
        assert server.store.stored_seq(bytes(key.verify_key)) == 39
        _, doc = await server.get()
        assert records.verify_envelope(doc["records"][0], now=T0).seq == 39


@async_test
async def test_unreadable_database_is_a_config_error(tmp_path: Path, clock: FakeClock) -> None:
    bad = tmp_path / "db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError):
        async with running(Settings(db_path=bad, clock=clock)):
            pass


@async_test
async def test_rate_limit_keys_on_forwarded_for_only_from_trusted_proxies(
    settings: Settings, key: nacl.signing.SigningKey
) -> None:
    limited = with_settings(settings, rate_limit=True, read_burst=1, read_rate=0.001)
    proxies = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    async with running(with_settings(limited, trusted_proxies=proxies)) as server:  # a proxy on this host
        assert (await server.get(**{"X-Forwarded-For": "198.51.100.1"}))[0] == 200
        assert (await server.get(**{"X-Forwarded-For": "198.51.100.1"}))[0] == 429
        assert (await server.get(**{"X-Forwarded-For": "spoof, 198.51.100.2"}))[0] == 200
        assert (await server.get(**{"X-Forwarded-For": "2001:db8::1"}))[0] == 200
        assert (await server.get(**{"X-Forwarded-For": "2001:db8::2"}))[0] == 429  # same /64
        assert (await server.get(**{"X-Forwarded-For": "not an ip"}))[0] == 200  # the proxy's own bucket
        assert (await server.get(**{"X-Forwarded-For": "garbage"}))[0] == 429  # ... not one per spelling
    async with running(limited) as server:  # by default no proxy is trusted, loopback included
        assert (await server.get(**{"X-Forwarded-For": "198.51.100.1"}))[0] == 200
        assert (await server.get(**{"X-Forwarded-For": "198.51.100.3"}))[0] == 429  # header ignored
