"""aiohttp application of the rendezvous service.

Routes (all errors are ``{"error": code, "reason": text}`` JSON)::

    POST   /v1/records   signed record envelope -> 204 + Reannounce-After | 400 401 403 409 413 429
    GET    /v1/records   ?name=PORT &id=B64URL &limit=N &cursor=C
                         -> 200 {"records": [envelope, ...], "next": C | null} | 400 401 429
    DELETE /v1/records   signed delete request -> 204 | 400 401 403 404 409 413 429
    GET    /healthz      -> 200 {"status": "ok", "records": N}

Order of checks on a write, cheapest first, so that nothing expensive happens for a refused request: per-IP
rate limit, bearer token, ``Content-Length`` (refused before any byte of the body is read), bounded read
(``client_max_size`` covers chunked bodies), signature and freshness, allow-list, then inside the store the
seq check and the per-source quota of identities.  Malformed input of any kind is answered by a 4xx chosen
here; the outer middleware's 500 is only a safety net for our own bugs.

Every limit is accounted to the client address: the TCP peer, or, when the peer is one of the configured
``trusted_proxies``, the right-most ``X-Forwarded-For`` hop that is not itself a trusted proxy (the hops to
its left were written by the client and prove nothing).  IPv6 clients are grouped by /64, because one host
commonly holds a whole /64; IPv4-mapped IPv6 addresses count as the IPv4 address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from meshserial import paths, ratelimit
from meshserial.errors import ConfigError, KeyFileError, MeshserialError, NetworkError, PortBusy, UsageError
from meshserial.keys import ID_HRP, parse_id
from meshserial.logonce import LogOnce
from meshserial.proto import records
from meshserial.ratelimit import TokenBuckets
from meshserial.rendezvous import DEFAULT_HOST, DEFAULT_MAX_IDS_PER_SOURCE, DEFAULT_PORT
from meshserial.rendezvous.store import (
    DEFAULT_PAGE,
    MAX_PAGE,
    DeleteOutcome,
    PutOutcome,
    RecordStore,
    decode_cursor,
)

log = logging.getLogger(__name__)

DB_FILENAME = "rendezvous.sqlite3"
MAX_BODY = records.MAX_ENVELOPE_SIZE
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_LIMIT = re.compile(r"[0-9]{1,9}")
MAX_FORWARDED_HOPS = 16  # X-Forwarded-For hops examined, right to left; a longer chain stops at a proxy

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Rendezvous service settings.

    ``token`` and ``allowed_ids`` may instead come from ``token_file`` and ``allow_file`` (read once by
    :func:`make_app`); giving both forms of one setting is an error.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_path: Path | None = None  # None: paths.state_dir() / "rendezvous.sqlite3"
    token: str | None = None  # bearer token required on POST and DELETE (and GET if protect_reads)
    token_file: Path | None = None
    protect_reads: bool = False
    allowed_ids: frozenset[bytes] | None = None  # None: any identity may register
    allow_file: Path | None = None
    max_ttl: int = records.DEFAULT_MAX_TTL
    max_records: int = 100_000
    max_ids_per_source: int = DEFAULT_MAX_IDS_PER_SOURCE  # identities with a live record per client address
    rate_limit: bool = True
    write_rate: float = 0.2  # tokens per second per client address (POST, DELETE)
    write_burst: int = 20
    read_rate: float = 5.0  # GET
    read_burst: int = 50
    # Peers whose X-Forwarded-For is believed.  None by default: anyone who can connect can send the header,
    # a reverse proxy on this host included, so believing loopback would let any local user pick its address.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    sweep_interval: float = 60.0
    clock: Callable[[], float] = field(default=time.time)


STORE_KEY = web.AppKey("store", RecordStore)


class _ApiError(MeshserialError):
    """An HTTP error answer (internal to this module; the middleware turns it into JSON)."""

    def __init__(self, status: int, code: str, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.headers = status, code, reason, dict(headers or {})


# --- helpers ------------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _State:
    settings: Settings
    token: bytes | None
    allowed: frozenset[bytes] | None
    reads: TokenBuckets
    writes: TokenBuckets
    log_once: LogOnce
    told_forwarded: bool = False  # the hint about an ignored X-Forwarded-For was logged


_STATE_KEY = web.AppKey("state", _State)


def read_token_file(path: Path) -> str:
    """Read a bearer token (first line, stripped); the file must not be readable by group or others."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read token file {path}: {exc}") from exc
    if mode & 0o077:
        raise KeyFileError(f"token file {path} is readable by others; chmod 600 it")
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise KeyFileError(f"token file {path} does not hold a token (one line of printable ASCII)")
    return token


def read_allow_file(path: Path) -> frozenset[bytes]:
    """Read server identities allowed to register: one per line, ``ms1…`` or base64url, ``#`` comments."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read allow file {path}: {exc}") from exc
    ids: set[bytes] = set()
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.lower().startswith(ID_HRP + "1"):
            try:
                ids.add(parse_id(text))
            except UsageError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from exc
            continue
        try:
            ids.add(records.parse_server_id(text))
        except records.RecordError as exc:
            raise ConfigError(f"{path}:{number}: not a base64url server id") from exc
    return frozenset(ids)


def _ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    return ip


def client_address(
    remote: str | None, forwarded: Sequence[str], trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The address a request is accounted to (None if the peer has no IP address).

    ``forwarded`` holds the ``X-Forwarded-For`` header values in order.  Starting at the TCP peer, step one
    hop to the left for as long as the current address is a trusted proxy: each proxy appends the address it
    received the request from, so the first untrusted address met is the client.  A hop that is not an IP
    address, or a chain longer than :data:`MAX_FORWARDED_HOPS`, stops the walk at the last trusted proxy.
    """
    ip = _ip(remote) if remote else None
    if ip is None or not trusted:
        return ip
    hops = [hop for value in forwarded for hop in value.split(",")][-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        if not any(ip in network for network in trusted):
            break
        previous = _ip(hop)
        if previous is None:
            break
        ip = previous
    return ip


def source_key(ip: IPAddress | None) -> str:
    """The key of rate limits and quotas: the IPv4 address, or the /64 of an IPv6 address."""
    return "unknown" if ip is None else ratelimit.source_key(str(ip))


def _peer(request: web.Request, state: _State) -> str:
    """The request's source key (see :func:`client_address`)."""
    trusted = state.settings.trusted_proxies
    forwarded = request.headers.getall("X-Forwarded-For", [])
    if forwarded and not state.told_forwarded:
        peer = _ip(request.remote or "")
        if peer is not None and not any(peer in network for network in trusted):
            # Once per process: behind a proxy that was not named, all clients share the proxy's limits.
            state.told_forwarded = True
            log.warning(
                "rendezvous: ignoring X-Forwarded-For from %s; if that is your reverse proxy, "
                "start with --trust-proxy %s",
                peer,
                peer,
            )
    return source_key(client_address(request.remote, forwarded, trusted))


def _json_error(
    status: int, code: str, reason: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": code, "reason": reason}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


_HTTP_CODES = {400: "bad-request", 404: "not-found", 405: "method-not-allowed", 413: "too-large"}


@web.middleware
async def _error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as exc:
        return _json_error(exc.status, exc.code, exc.reason, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        code = _HTTP_CODES.get(exc.status, "http-error")
        return _json_error(exc.status, code, exc.reason.lower(), headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("rendezvous: internal error on %s %s", request.method, request.path)
        return _json_error(500, "internal", "internal error")


@web.middleware
async def _rate_limit_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state: _State = request.app[_STATE_KEY]
    if state.settings.rate_limit and request.path != "/healthz":
        buckets = state.reads if request.method in ("GET", "HEAD") else state.writes
        wait = buckets.take(_peer(request, state), time.monotonic())
        if wait > 0:
            raise _ApiError(429, "rate-limited", "too many requests", {"Retry-After": str(math.ceil(wait))})
    return await handler(request)


def _check_token(request: web.Request, state: _State) -> None:
    if state.token is None:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    presented = value.strip().encode("utf-8", "surrogateescape") if scheme.lower() == "bearer" else b""
    if not hmac.compare_digest(presented, state.token):
        _refuse(request, state, "missing or wrong bearer token")
        raise _ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def _refuse(request: web.Request, state: _State, reason: str) -> None:
    state.log_once.warning(_peer(request, state), reason, repeats=f"refused requests ({reason})")


async def _read_body(request: web.Request, state: _State) -> bytes:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        _refuse(request, state, "body too large")
        raise _ApiError(413, "too-large", f"body larger than {MAX_BODY} bytes")
    try:
        return await request.read()  # client_max_size bounds bodies without Content-Length
    except web.HTTPRequestEntityTooLarge as exc:
        _refuse(request, state, "body too large")
        raise _ApiError(413, "too-large", f"body larger than {MAX_BODY} bytes") from exc


def _record_error(request: web.Request, state: _State, exc: records.RecordError) -> _ApiError:
    _refuse(request, state, exc.reason)
    status = 413 if isinstance(exc, records.RecordTooLarge) else 400
    return _ApiError(status, exc.code, exc.reason)


def _check_allowed(request: web.Request, state: _State, server_id: bytes) -> None:
    if state.allowed is not None and server_id not in state.allowed:
        _refuse(request, state, "identity not on the allow-list")
        raise _ApiError(403, "forbidden", "identity not allowed on this rendezvous")


# --- handlers -----------------------------------------------------------------------------------------------


async def _post_record(request: web.Request) -> web.StreamResponse:
    state: _State = request.app[_STATE_KEY]
    _check_token(request, state)
    body = await _read_body(request, state)
    now = state.settings.clock()
    try:
        record = records.verify_envelope(body, now=now, max_ttl=state.settings.max_ttl)
    except records.RecordError as exc:
        raise _record_error(request, state, exc) from exc
    _check_allowed(request, state, record.server_id)
    source = _peer(request, state)
    try:
        outcome = await request.app[STORE_KEY].put(record, source=source, now=now)
    except ConfigError as exc:
        log.error("rendezvous: %s", exc)
        raise _ApiError(503, "unavailable", "storage unavailable", {"Retry-After": "30"}) from exc
    if outcome is PutOutcome.STALE:
        stored = request.app[STORE_KEY].stored_seq(record.server_id)
        raise _ApiError(409, "stale-seq", f"seq {record.seq} is not greater than the stored seq {stored}")
    if outcome is PutOutcome.FULL:
        raise _ApiError(503, "full", "rendezvous is full", {"Retry-After": "300"})
    if outcome is PutOutcome.TOO_MANY_IDS:
        _refuse(request, state, "too many identities")
        frees = request.app[STORE_KEY].next_expiry(source, now)
        wait = 60 if frees is None else max(1, math.ceil(frees - now))
        limit = state.settings.max_ids_per_source
        raise _ApiError(
            429,
            "too-many-ids",
            f"{source} already has live records for {limit} server identities, the most this rendezvous"
            " accepts from one address; withdraw one or wait until one expires",
            {"Retry-After": str(wait)},
        )
    reannounce = max(1, int((record.expires - now) / 2))
    return web.Response(status=204, headers={"Reannounce-After": str(reannounce)})


async def _delete_record(request: web.Request) -> web.StreamResponse:
    state: _State = request.app[_STATE_KEY]
    _check_token(request, state)
    body = await _read_body(request, state)
    now = state.settings.clock()
    try:
        delete = records.verify_delete(body, now=now)
    except records.RecordError as exc:
        raise _record_error(request, state, exc) from exc
    _check_allowed(request, state, delete.server_id)
    try:
        outcome = await request.app[STORE_KEY].delete(delete, now=now)
    except ConfigError as exc:
        log.error("rendezvous: %s", exc)
        raise _ApiError(503, "unavailable", "storage unavailable", {"Retry-After": "30"}) from exc
    if outcome is DeleteOutcome.NOT_FOUND:
        raise _ApiError(404, "not-found", "no live record for this identity")
    if outcome is DeleteOutcome.STALE:
        raise _ApiError(409, "stale-seq", "the stored record is newer than this delete request")
    return web.Response(status=204)


def _one_query_value(request: web.Request, state: _State, key: str) -> str | None:
    values = request.query.getall(key, [])
    if len(values) > 1:
        _refuse(request, state, f"repeated query parameter {key}")
        raise _ApiError(400, "bad-query", f"query parameter {key!r} given more than once")
    return values[0] if values else None


async def _get_records(request: web.Request) -> web.StreamResponse:
    state: _State = request.app[_STATE_KEY]
    if state.settings.protect_reads:
        _check_token(request, state)
    name = _one_query_value(request, state, "name")
    if name is not None and _NAME.fullmatch(name) is None:
        _refuse(request, state, "invalid name query")
        raise _ApiError(400, "bad-query", "invalid port name")
    id_text = _one_query_value(request, state, "id")
    server_id = None
    if id_text is not None:
        try:
            server_id = records.parse_server_id(id_text)
        except records.RecordError as exc:
            _refuse(request, state, "invalid id query")
            raise _ApiError(400, "bad-query", "id must be a base64url 32-byte key") from exc
    limit_text = _one_query_value(request, state, "limit")
    limit = DEFAULT_PAGE
    if limit_text is not None:
        if _LIMIT.fullmatch(limit_text) is None or int(limit_text) == 0:
            _refuse(request, state, "invalid limit query")
            raise _ApiError(400, "bad-query", "limit must be a whole number of at least 1")
        limit = min(int(limit_text), MAX_PAGE)  # more is not an error: the client just gets more pages
    cursor = _one_query_value(request, state, "cursor")
    after = None
    if cursor is not None:
        try:
            after = decode_cursor(cursor)
        except ValueError as exc:
            _refuse(request, state, "invalid cursor query")
            raise _ApiError(400, "bad-query", "invalid cursor: pass the 'next' of the previous page") from exc
    now = state.settings.clock()
    body = request.app[STORE_KEY].listing(now=now, name=name, server_id=server_id, after=after, limit=limit)
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})


async def _healthz(request: web.Request) -> web.StreamResponse:
    state: _State = request.app[_STATE_KEY]
    count = request.app[STORE_KEY].live_count(state.settings.clock())
    return web.json_response({"status": "ok", "records": count})


# --- application --------------------------------------------------------------------------------------------


def _db_path(settings: Settings) -> Path:
    path = settings.db_path if settings.db_path is not None else paths.state_dir() / DB_FILENAME
    paths.ensure_dir(path.parent)
    return path


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    state: _State = app[_STATE_KEY]
    settings = state.settings
    store = await RecordStore.open(
        _db_path(settings),
        max_ttl=settings.max_ttl,
        max_records=settings.max_records,
        max_ids_per_source=settings.max_ids_per_source,
        now=settings.clock(),
    )
    app[STORE_KEY] = store
    # The sweeper lives exactly as long as the application: started here, cancelled and awaited below.
    sweeper = asyncio.create_task(_sweep_forever(store, settings), name="rendezvous-sweeper")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await store.aclose()


async def _sweep_forever(store: RecordStore, settings: Settings) -> None:
    while True:
        await asyncio.sleep(settings.sweep_interval)
        try:
            changed = await store.sweep(settings.clock())
        except ConfigError as exc:
            log.error("rendezvous: sweep failed: %s", exc)
        else:
            if changed:
                log.debug("rendezvous: swept %d expired records", changed)


def make_app(settings: Settings) -> web.Application:
    """Build the rendezvous application; the store opens on startup.  Raises ConfigError for bad files."""
    if settings.token is not None and settings.token_file is not None:
        raise ConfigError("give the rendezvous token either inline or as a file, not both")
    if settings.allowed_ids is not None and settings.allow_file is not None:
        raise ConfigError("give the rendezvous allow-list either inline or as a file, not both")
    if settings.max_ids_per_source < 1:
        raise ConfigError("the rendezvous must accept at least one identity per address")
    token = settings.token if settings.token_file is None else read_token_file(settings.token_file)
    allowed = settings.allowed_ids if settings.allow_file is None else read_allow_file(settings.allow_file)
    state = _State(
        settings=settings,
        token=None if token is None else token.encode(),
        allowed=allowed,
        reads=TokenBuckets(settings.read_rate, settings.read_burst),
        writes=TokenBuckets(settings.write_rate, settings.write_burst),
        log_once=LogOnce(log, level=logging.INFO, message="rendezvous: refused request from %s: %s"),
    )
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_error_middleware, _rate_limit_middleware])
    app[_STATE_KEY] = state
    app.cleanup_ctx.append(_store_ctx)
    app.router.add_post("/v1/records", _post_record)
    app.router.add_get("/v1/records", _get_records)
    app.router.add_delete("/v1/records", _delete_record)
    app.router.add_get("/healthz", _healthz)
    return app


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_listening: Callable[[list[tuple[str, int]]], None] | None = None,
) -> None:
    """Run the service until ``stop`` is set or the task is cancelled."""
    app = make_app(settings)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            where = f"{settings.host}:{settings.port}"
            if exc.errno == errno.EADDRINUSE:
                raise PortBusy(f"rendezvous: address {where} already in use") from exc
            raise NetworkError(f"rendezvous: cannot listen on {where}: {exc.strerror}") from exc
        bound = [(str(a[0]), int(a[1])) for a in runner.addresses]
        log.info("rendezvous listening on %s", ", ".join(f"{h}:{p}" for h, p in bound))
        if on_listening is not None:
            on_listening(bound)
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
