"""Client side of the rendezvous service: fetch and verify records, keep our own record registered.

The rendezvous is untrusted.  :func:`fetch_records` verifies every envelope itself and re-applies the filters
the service was asked for (a lying service can withhold records, never forge or alter one).  It follows the
service's pages to the end, within bounds on time, pages, records and bytes that a hostile service cannot
stretch.  A verified record
is still only a hint of where a server *may* be reached: the handshake against a pinned key decides who it is.

:class:`Registrar` keeps one server's record fresh: it signs a new record (new ``seq``, new expiry) at about
half of the TTL, backs off with jitter while the service is unreachable, honours ``Retry-After``, and
withdraws the record with a signed delete on a clean :meth:`Registrar.aclose`.  It never blocks its caller: it
runs as a task in a ``TaskGroup`` (the caller's via :meth:`Registrar.start`, or its own via ``async with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import nacl.signing

from meshserial.errors import ConnectError, NetworkError, ProtocolError, Refused, UsageError
from meshserial.logonce import LogOnce
from meshserial.proto import records
from meshserial.proto.records import PortInfo, Record
from meshserial.proto.text import escape

log = logging.getLogger(__name__)

RECORDS_PATH = "/v1/records"
# Bounds on one listing, all its pages together; an honest service stays well within them.
MAX_RESPONSE = 32 * 1024 * 1024  # bytes (10 000 typical records are ~5 MiB)
MAX_RECORDS = 100_000  # envelopes, valid or not (the service's default capacity)
MAX_PAGES = 256  # a page is up to ~512 KiB, so 32 MiB needs 64 of them
MAX_CURSOR = 512  # characters of one ``next`` cursor
PAGE_LIMIT = 1000  # records asked for per page; the service may send fewer
DEFAULT_TTL = 3600.0


_log_invalid = LogOnce(log, message="rendezvous %s: dropped an invalid record: %s")


def records_url(url: str) -> str:
    """``https://host[/prefix]`` → ``https://host[/prefix]/v1/records`` (unchanged if already there)."""
    base = url.rstrip("/")
    return base if base.endswith(RECORDS_PATH) else base + RECORDS_PATH


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"rendezvous response larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _status_error(status: int, what: str) -> Exception:
    if status in (401, 403):
        return Refused(f"rendezvous refused {what} (HTTP {status})")
    return NetworkError(f"rendezvous {what} failed (HTTP {status})")


async def fetch_records(
    url: str,
    *,
    name: str | None = None,
    id: bytes | str | None = None,
    timeout: float = 5.0,
    session: aiohttp.ClientSession | None = None,
    token: str | None = None,
    now: float | None = None,
) -> list[Record]:
    """Fetch records from a rendezvous and return those whose signature and validity verify.

    ``id`` is a 32-byte server key (raw or base64url).  Invalid records are dropped and logged once per
    rendezvous and reason; the newest record per identity wins.  The service's pages are followed until the
    last one; ``timeout`` bounds the whole listing, as do :data:`MAX_PAGES`, :data:`MAX_RECORDS` and
    :data:`MAX_RESPONSE`.  Raises ConnectError/NetworkError when the service cannot be reached or answers an
    error, Refused on 401/403, ProtocolError on a malformed answer.  Once a page has arrived, a later failure
    or a bound only ends the listing early: the records verified so far are returned and a warning is logged
    (a service can always withhold records; what it did send still verifies).
    """
    server_id: bytes | None = None
    params: dict[str, str] = {"limit": str(PAGE_LIMIT)}
    if id is not None:
        try:
            server_id = id if isinstance(id, bytes) else records.parse_server_id(id)
        except records.RecordError as exc:
            raise UsageError(f"not a base64url server id: {id!r}") from exc
        if len(server_id) != records.KEY_SIZE:
            raise UsageError("a server id is 32 bytes")
        params["id"] = records.b64url_encode(server_id)
    if name is not None:
        params["name"] = name
    target = records_url(url)
    listing = _Listing(target, name=name, server_id=server_id, now=time.time() if now is None else now)
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        try:
            async with asyncio.timeout(timeout):
                await _follow_pages(session, target, params, token, listing)
        except (aiohttp.ClientError, TimeoutError, OSError, NetworkError, ProtocolError, Refused) as exc:
            if listing.pages == 0:
                if isinstance(exc, NetworkError | ProtocolError | Refused):
                    raise
                raise ConnectError(f"cannot reach rendezvous {target}: {exc or type(exc).__name__}") from exc
            log.warning(
                "rendezvous %s: listing cut short after %d pages (%d records): %s",
                target,
                listing.pages,
                len(listing.newest),
                escape(str(exc) or type(exc).__name__, 200),
            )
    return list(listing.newest.values())


async def _follow_pages(
    session: aiohttp.ClientSession,
    target: str,
    params: dict[str, str],
    token: str | None,
    listing: _Listing,
) -> None:
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        query = params if cursor is None else {**params, "cursor": cursor}
        async with session.get(target, params=query, headers=_auth(token)) as response:
            if response.status != 200:
                raise _status_error(response.status, "query")
            try:
                body = await _read_capped(response, MAX_RESPONSE - listing.size)
            except ProtocolError as exc:
                raise ProtocolError(f"rendezvous listing larger than {MAX_RESPONSE} bytes") from exc
        cursor = listing.add(body)
        if cursor is None:  # the last page, or a service older than pages that sent everything at once
            return
        # A service that loops or never ends is cut off; an honest one ends well within these bounds.
        if cursor in seen:
            raise ProtocolError("rendezvous repeated a page cursor")
        if listing.pages >= MAX_PAGES or listing.items >= MAX_RECORDS:
            raise ProtocolError(f"rendezvous listing longer than {MAX_PAGES} pages or {MAX_RECORDS} records")
        seen.add(cursor)


class _Listing:
    """The pages of one listing received so far: the newest verified record per identity, and the totals."""

    def __init__(self, source: str, *, name: str | None, server_id: bytes | None, now: float) -> None:
        self.source, self.name, self.server_id, self.now = source, name, server_id, now
        self.newest: dict[bytes, Record] = {}
        self.pages = self.items = self.size = 0

    def add(self, body: bytes) -> str | None:
        """Take one page; return its ``next`` cursor.  ProtocolError if it is not a listing."""
        items, cursor = _parse_page(body, self.source)
        self.pages += 1
        self.items += len(items)
        self.size += len(body)
        for item in items:
            try:
                record = records.verify_envelope(item, now=self.now)
            except records.RecordError as exc:
                _log_invalid.warning(self.source, exc.reason, repeats="invalid records dropped")
                continue
            if self.server_id is not None and record.server_id != self.server_id:
                continue
            if self.name is not None and self.name not in record.names:
                continue
            current = self.newest.get(record.server_id)
            if current is None or record.seq > current.seq:
                self.newest[record.server_id] = record
        return cursor


def _parse_page(body: bytes, source: str) -> tuple[list[Any], str | None]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"rendezvous {source} sent invalid JSON") from exc
    items = doc.get("records") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ProtocolError(f"rendezvous {source} sent no record list")
    cursor = doc.get("next")  # absent (or null) on the last page
    valid = isinstance(cursor, str) and 0 < len(cursor) <= MAX_CURSOR and cursor.isprintable()
    if cursor is not None and not (valid and cursor.isascii()):
        raise ProtocolError(f"rendezvous {source} sent an invalid page cursor")
    return items, cursor


def parse_listing(
    body: bytes,
    *,
    source: str,
    name: str | None = None,
    server_id: bytes | None = None,
    now: float | None = None,
) -> list[Record]:
    """Verify the envelopes of one ``GET /v1/records`` page; keep the newest valid record per identity."""
    listing = _Listing(source, name=name, server_id=server_id, now=time.time() if now is None else now)
    listing.add(body)
    return list(listing.newest.values())


class Registrar:
    """Keeps this server's record registered on one rendezvous.

    Use either ``registrar.start(task_group)`` and later ``await registrar.aclose()``, or
    ``async with Registrar(...) as registrar:``.  :meth:`update` changes the published ports or addresses and
    re-registers at once.
    """

    def __init__(
        self,
        url: str,
        signing_key: nacl.signing.SigningKey,
        *,
        ports: Iterable[PortInfo],
        addresses: Iterable[str],
        ttl: float = DEFAULT_TTL,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        min_backoff: float = 1.0,
        max_backoff: float = 300.0,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not 2 <= ttl <= records.DEFAULT_MAX_TTL:
            raise UsageError(f"rendezvous TTL must be between 2 s and {records.DEFAULT_MAX_TTL} s")
        if not 0 < min_backoff <= max_backoff:
            raise UsageError("rendezvous backoff must satisfy 0 < min_backoff <= max_backoff")
        self._url = records_url(url)
        self._key = signing_key
        self._ports: tuple[PortInfo, ...] = tuple(ports)
        self._addresses: tuple[str, ...] = tuple(addresses)
        self._ttl = ttl
        self._token = token
        self._session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._min_backoff, self._max_backoff = min_backoff, max_backoff
        self._timeout = request_timeout
        self._clock = clock
        self._rng = rng or random.Random()
        self._seq = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._running = False
        self._loop_exited = asyncio.Event()
        self._closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        # Observable state (for status displays and tests).
        self.registered_seq: int | None = None
        self.successes = 0
        self.failures = 0
        self.last_error: str | None = None
        self.delays: list[float] = []  # recent waits before the next attempt, newest last (bounded)
        records.sign_record(signing_key, seq=0, expires=0, ports=self._ports, addresses=self._addresses)

    # --- life cycle -----------------------------------------------------------------------------------------

    def start(self, task_group: asyncio.TaskGroup) -> None:
        """Run the registration loop as a task of ``task_group``; returns at once."""
        if self._task is not None or self._running:
            raise UsageError("registrar already started")
        self._task = task_group.create_task(self.run(), name="rendezvous-registrar")

    async def __aenter__(self) -> Registrar:
        stack = contextlib.AsyncExitStack()
        task_group = await stack.enter_async_context(asyncio.TaskGroup())
        self._exit_stack = stack
        self.start(task_group)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.aclose()
        finally:
            if self._exit_stack is not None:
                stack, self._exit_stack = self._exit_stack, None
                await stack.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Stop refreshing and withdraw the record (best effort, bounded by the request timeout)."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._wake.set()
        try:
            if self._running or (self._task is not None and not self._task.done()):
                await self._loop_exited.wait()
            if self.registered_seq is not None:
                await self._withdraw()
        finally:
            if self._own_session is not None:
                await self._own_session.close()
                self._own_session = None
            self._closed.set()

    def update(
        self, *, ports: Iterable[PortInfo] | None = None, addresses: Iterable[str] | None = None
    ) -> None:
        """Publish new ports and/or addresses; the loop re-registers right away."""
        new_ports = self._ports if ports is None else tuple(ports)
        new_addresses = self._addresses if addresses is None else tuple(addresses)
        records.sign_record(self._key, seq=0, expires=0, ports=new_ports, addresses=new_addresses)
        self._ports, self._addresses = new_ports, new_addresses
        self._wake.set()

    async def wait_until(self, predicate: Callable[[Registrar], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds after some state change; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    # --- the loop -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Register, refresh and retry until :meth:`aclose`.  Never raises for network trouble."""
        if self._running:
            raise UsageError("registrar already running")
        self._running = True
        try:
            while not self._closing:
                self._wake.clear()
                delay = await self._attempt()
                self.delays = [*self.delays[-31:], delay]
                await self._notify()
                if self._closing:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self._running = False
            self._loop_exited.set()
            if not self._closing and self._own_session is not None:
                # Cancelled without aclose(): do not leak the session (aclose() would open a new one).
                session, self._own_session = self._own_session, None
                await session.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is not None:
            return self._session
        if self._own_session is None:
            self._own_session = aiohttp.ClientSession()
        return self._own_session

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(self._clock() * 1000))
        return self._seq

    def _backoff(self, retry_after: float | None) -> float:
        cap = min(self._max_backoff, self._min_backoff * 2 ** min(self.failures - 1, 32))
        delay: float = cap / 2 + self._rng.uniform(0, cap / 2)  # "equal jitter": grows, yet spreads the herd
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_backoff))
        return delay

    async def _attempt(self) -> float:
        """One registration (with one seq resync on 409); return how long to wait before the next."""
        retry_after: float | None = None
        try:
            status, headers, body = await self._post()
            if status == 409 and await self._resync_seq():
                status, headers, body = await self._post()
            if 200 <= status < 300:
                return self._succeeded(headers)
            retry_after = _parse_seconds(headers.get("retry-after"))
            reason = f"HTTP {status}{_error_reason(body)}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        self.failures += 1
        if self.last_error is None or self.failures == 1:
            # An HTTP library error can quote what the service sent (a status line, a header).
            log.warning("rendezvous %s: registration failed (%s); will retry", self._url, escape(reason, 200))
        self.last_error = reason
        return self._backoff(retry_after)

    def _succeeded(self, headers: dict[str, str]) -> float:
        if self.failures:
            log.info("rendezvous %s: registered again after %d failures", self._url, self.failures)
        self.successes += 1
        self.failures = 0
        self.last_error = None
        self.registered_seq = self._seq
        half = self._ttl / 2
        hint = _parse_seconds(headers.get("reannounce-after"))
        delay = min(half, hint) if hint is not None and hint > 0 else half
        return delay * self._rng.uniform(0.85, 0.95)  # refresh a little early, not all in step

    async def _post(self) -> tuple[int, dict[str, str], bytes]:
        now = self._clock()
        envelope = records.sign_record(
            self._key,
            seq=self._next_seq(),
            expires=int(now + self._ttl),
            ports=self._ports,
            addresses=self._addresses,
        )
        headers = {"Content-Type": "application/json", **_auth(self._token)}
        async with (
            asyncio.timeout(self._timeout),
            self._http().post(self._url, data=envelope, headers=headers) as response,
        ):
            body = await _read_capped(response, 4096)
            return response.status, {k.lower(): v for k, v in response.headers.items()}, body

    async def _resync_seq(self) -> bool:
        """After a 409, continue from our newest record on the service (its signature proves it is ours)."""
        try:
            found = await fetch_records(
                self._url,
                id=bytes(self._key.verify_key),
                timeout=self._timeout,
                session=self._http(),
                token=self._token,
                now=self._clock(),
            )
        except (NetworkError, ProtocolError, Refused) as exc:
            log.debug("rendezvous %s: cannot resync seq: %s", self._url, escape(str(exc), 200))
            return False
        if found and found[0].seq >= self._seq:
            self._seq = found[0].seq
            return True
        return False

    async def _withdraw(self) -> None:
        body = records.sign_delete(self._key, seq=self._seq, ts=int(self._clock()))
        headers = {"Content-Type": "application/json", **_auth(self._token)}
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._http().delete(self._url, data=body, headers=headers) as response,
            ):
                await response.read()
                if response.status not in (204, 404):
                    log.warning(
                        "rendezvous %s: withdrawing our record failed (HTTP %d)", self._url, response.status
                    )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning(
                "rendezvous %s: withdrawing our record failed: %s",
                self._url,
                escape(str(exc) or type(exc).__name__, 200),
            )
        self.registered_seq = None


def _error_reason(body: bytes) -> str:
    """``": <reason>"`` from a JSON error answer, for logs (the text is the service's, so keep it short)."""
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, RecursionError, AttributeError):
        return ""
    return f": {reason[:200]!s}" if isinstance(reason, str) and reason.isprintable() else ""


def _parse_seconds(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def addresses_for(hosts: Sequence[str], port: int) -> list[str]:
    """Format ``ip:port`` / ``[ipv6]:port`` record addresses for the given IP literals."""
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host in hosts]
