"""Durable record store for the rendezvous service: SQLite on disk, a dict in memory.

SQLite is the durable copy; every call to it runs on one dedicated worker thread (a single-thread executor
owns the connection), so the event loop never blocks on disk and statements are serialized without locks.
Reads are served from memory: the ids of live records are kept sorted (all of them, and per port name), so a
page of ``GET /v1/records`` is a binary search and one join of ready-made envelope bytes, whatever the size of
the store.

Pages are ordered by server id and a cursor is the last id of the previous page, so a walk through the pages
never repeats or skips a record that stays live while it runs, however many writes happen in between (a
record registered behind the cursor is simply seen by the next walk).

What one peer can make the store hold is bounded twice.  Per identity: one row (the id is the primary key),
holding one envelope of at most 4096 bytes and the port-name index derived from it.  Per source (the client
address as the application sees it, IPv6 by /64): at most ``max_ids_per_source`` identities with a live
record.  The source is stored with the row, so the counts are rebuilt from the table after a restart; rows of
schema 1, written before the source was kept, count for nobody until they are written again (and that
write is a refresh, never refused for quota).

Rollback protection outlives a record.  Each row keeps the highest ``seq`` seen for an identity until
``retain_until`` = (last write) + ``max_ttl``: any older record that an attacker could replay was signed
before that write and therefore expires before ``retain_until``.  Expired records and deleted ones become
tombstones (no envelope, ``seq`` kept) until then, and the sweeper removes rows past ``retain_until``.  The
seq check is done in the SQL statement itself, so two concurrent writes for one identity cannot roll each
other back.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshserial.errors import ConfigError
from meshserial.proto import records
from meshserial.proto.records import DeleteRequest, Record
from meshserial.rendezvous import DEFAULT_MAX_IDS_PER_SOURCE

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Applied in order inside the opening transaction; each is a no-op on a database that already has it.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS records (
    id BLOB PRIMARY KEY,          -- 32-byte Ed25519 public key
    seq INTEGER NOT NULL,         -- highest seq accepted (or deleted) for this id
    expires INTEGER NOT NULL,     -- record expiry, Unix seconds
    retain_until REAL NOT NULL,   -- keep seq (anti-rollback) until then
    envelope BLOB,                -- compact envelope JSON; NULL = tombstone
    names TEXT NOT NULL,          -- JSON list of port names, for filtering
    source TEXT NOT NULL DEFAULT '' -- client address (IPv6 /64) of the last write; '' = unknown (schema 1)
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS records_retain ON records(retain_until)",
)
_MIGRATIONS = {  # column added in schema 2 -> the statement that adds it to a schema-1 table
    "source": "ALTER TABLE records ADD COLUMN source TEXT NOT NULL DEFAULT ''",
}

DEFAULT_PAGE = 200  # records per page when the client does not say
MAX_PAGE = 1000  # a larger ``limit`` is clamped to this
# A page also ends before its envelopes pass this many bytes, so even a page of maximum-size (4096-byte)
# envelopes stays well under a megabyte.
PAGE_BYTES = 512 * 1024

_T = TypeVar("_T")


class PutOutcome(enum.Enum):
    STORED = "stored"
    STALE = "stale"  # seq not greater than the stored one: replay or rollback
    FULL = "full"
    TOO_MANY_IDS = "too-many-ids"  # the source already has live records for its quota of identities


class DeleteOutcome(enum.Enum):
    DELETED = "deleted"
    NOT_FOUND = "not-found"
    STALE = "stale"  # the stored record is newer than the delete request


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    seq: int
    expires: int
    retain_until: float
    envelope: bytes | None
    names: frozenset[str]  # empty for a tombstone
    source: str


def encode_cursor(server_id: bytes) -> str:
    """The cursor of the page after ``server_id`` (opaque to clients; today the id in base64url)."""
    return records.b64url_encode(server_id)


def decode_cursor(text: str) -> bytes:
    """Inverse of :func:`encode_cursor`; ValueError if ``text`` is not a cursor we could have made."""
    try:
        return records.parse_server_id(text)
    except records.RecordError as exc:
        raise ValueError("invalid cursor") from exc


def _discard(ids: list[bytes], server_id: bytes) -> None:
    """Remove ``server_id`` from the sorted list ``ids`` if it is there."""
    index = bisect.bisect_left(ids, server_id)
    if index < len(ids) and ids[index] == server_id:
        del ids[index]


def _count(counts: dict[bytes, int], server_id: bytes, step: int) -> None:
    count = counts.get(server_id, 0) + step
    if count:
        counts[server_id] = count
    else:
        del counts[server_id]


class RecordStore:
    """Records by identity; open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_ttl: float,
        max_records: int,
        max_ids_per_source: int = DEFAULT_MAX_IDS_PER_SOURCE,
    ) -> None:
        self._path = str(path)
        self._max_ttl = max_ttl
        self._max_records = max_records
        self._max_ids_per_source = max_ids_per_source
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rendezvous-db")
        self._conn: sqlite3.Connection | None = None
        self._entries: dict[bytes, _Entry] = {}
        # Indexes over the entries that hold an envelope (expired ones too, until the sweep):
        self._live: list[bytes] = []  # their ids, sorted: the order of pages
        self._by_name: dict[str, list[bytes]] = {}  # port name -> sorted ids that list it
        self._by_source: dict[str, set[bytes]] = {}  # source -> ids it last wrote
        # Writes in flight, counted by the quotas so that concurrent requests cannot overshoot them
        # (refcounts: one identity may race with itself).
        self._pending: dict[str, dict[bytes, int]] = {}  # source -> ids it is writing
        self._pending_new: dict[bytes, int] = {}  # ids being written that are not in the store yet
        self.sweep_done = asyncio.Event()  # set after each sweep; tests wait on it

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        max_ttl: float,
        max_records: int,
        now: float,
        max_ids_per_source: int = DEFAULT_MAX_IDS_PER_SOURCE,
    ) -> RecordStore:
        """Open (creating or upgrading if needed) the database at ``path`` and load the records retained."""
        store = cls(path, max_ttl=max_ttl, max_records=max_records, max_ids_per_source=max_ids_per_source)
        try:
            rows = await store._run(store._open_sync, now)
        except BaseException:
            await store.aclose()
            raise
        for server_id, seq, expires, retain_until, envelope, names, source in rows:
            store._set(
                bytes(server_id),
                _Entry(
                    seq=seq,
                    expires=expires,
                    retain_until=retain_until,
                    envelope=None if envelope is None else bytes(envelope),
                    names=frozenset(json.loads(names)) if envelope is not None else frozenset(),
                    source=source,
                ),
            )
        log.info("rendezvous store %s: %d records loaded", store._path, len(store._entries))
        return store

    async def aclose(self) -> None:
        """Close the database and stop the worker thread.  Idempotent."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await self._run(conn.close)
            except ConfigError:
                pass
        self._executor.shutdown(wait=True)

    async def _run(self, func: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, func, *args)
        except sqlite3.Error as exc:
            raise ConfigError(f"rendezvous database {self._path}: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"rendezvous database {self._path}: {exc.strerror}") from exc

    # --- worker-thread side -------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ConfigError("rendezvous database is closed")
        return self._conn

    def _open_sync(self, now: float) -> list[tuple[bytes, int, int, float, bytes | None, str, str]]:
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigError(f"rendezvous database {self._path} has a newer schema ({version})")
            conn.execute("PRAGMA journal_mode=WAL")  # not allowed inside a transaction
            conn.execute("PRAGMA synchronous=NORMAL")
            # Create or upgrade in one transaction: an interrupted upgrade leaves the old schema intact.
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
            for column, statement in _MIGRATIONS.items():
                if column not in columns:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                log.info("rendezvous database %s: schema %d -> %d", self._path, version, SCHEMA_VERSION)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            conn.execute("DELETE FROM records WHERE retain_until <= ?", (now,))
            rows = conn.execute(
                "SELECT id, seq, expires, retain_until, envelope, names, source FROM records"
            ).fetchall()
        except BaseException:
            conn.close()  # rolls back a transaction still open
            raise
        self._conn = conn
        return rows

    def _put_sync(self, record: Record, retain_until: float, names: str, source: str) -> bool:
        cursor = self._db().execute(
            "INSERT INTO records (id, seq, expires, retain_until, envelope, names, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, expires = excluded.expires, "
            "retain_until = max(records.retain_until, excluded.retain_until), "
            "envelope = excluded.envelope, names = excluded.names, source = excluded.source "
            "WHERE excluded.seq > records.seq",
            (record.server_id, record.seq, record.expires, retain_until, record.envelope, names, source),
        )
        return cursor.rowcount == 1

    def _delete_sync(self, request: DeleteRequest, retain_until: float) -> bool:
        cursor = self._db().execute(
            "UPDATE records SET seq = max(seq, ?), envelope = NULL, names = '[]', "
            "retain_until = max(retain_until, ?) WHERE id = ? AND seq <= ? AND envelope IS NOT NULL",
            (request.seq, retain_until, request.server_id, request.seq),
        )
        return cursor.rowcount == 1

    def _sweep_sync(self, now: float) -> int:
        with self._db() as conn:  # one transaction
            removed = conn.execute("DELETE FROM records WHERE retain_until <= ?", (now,)).rowcount
            expired = conn.execute(
                "UPDATE records SET envelope = NULL, names = '[]' "
                "WHERE envelope IS NOT NULL AND expires <= ?",
                (now,),
            ).rowcount
        return int(removed) + int(expired)

    # --- event-loop side ----------------------------------------------------------------------------------

    def _set(self, server_id: bytes, entry: _Entry | None) -> None:
        """Replace (or with None, remove) the entry of ``server_id``, keeping the indexes in step."""
        old = self._entries.pop(server_id, None)
        if old is not None and old.envelope is not None:
            _discard(self._live, server_id)
            for name in old.names:
                ids = self._by_name[name]
                _discard(ids, server_id)
                if not ids:
                    del self._by_name[name]
            owned = self._by_source[old.source]
            owned.discard(server_id)
            if not owned:
                del self._by_source[old.source]
        if entry is not None:
            self._entries[server_id] = entry
            if entry.envelope is not None:
                bisect.insort(self._live, server_id)
                for name in entry.names:
                    bisect.insort(self._by_name.setdefault(name, []), server_id)
                self._by_source.setdefault(entry.source, set()).add(server_id)

    def _tombstone(self, server_id: bytes, seq: int, retain_until: float) -> None:
        entry = self._entries[server_id]
        self._set(
            server_id,
            _Entry(
                seq=seq,
                expires=entry.expires,
                retain_until=retain_until,
                envelope=None,
                names=frozenset(),
                source=entry.source,
            ),
        )

    def stored_seq(self, server_id: bytes) -> int | None:
        """Highest seq retained for ``server_id`` (live or tombstone), or None."""
        entry = self._entries.get(server_id)
        return None if entry is None else entry.seq

    def live_count(self, now: float) -> int:
        return sum(1 for server_id in self._live if self._entries[server_id].expires > now)

    def ids_of(self, source: str, now: float) -> int:
        """How many identities ``source`` holds live records for, writes in flight included."""
        live = {i for i in self._by_source.get(source, ()) if self._entries[i].expires > now}
        return len(live.union(self._pending.get(source, ())))

    def _at_quota(self, source: str, now: float) -> bool:
        owned, pending = self._by_source.get(source, ()), self._pending.get(source, ())
        if len(owned) + len(pending) < self._max_ids_per_source:
            return False  # the common case, decided without looking at expiry times
        return self.ids_of(source, now) >= self._max_ids_per_source

    def next_expiry(self, source: str, now: float) -> float | None:
        """When the first live record of ``source`` expires (and frees a place in its quota), or None."""
        times = [self._entries[i].expires for i in self._by_source.get(source, ())]
        return min((t for t in times if t > now), default=None)

    async def put(self, record: Record, *, source: str, now: float) -> PutOutcome:
        """Store ``record`` (already verified) written by ``source``, unless a limit or a newer seq says no.

        Refreshing an identity that ``source`` already holds a live record for is never refused for quota.
        """
        entry = self._entries.get(record.server_id)
        if entry is not None and record.seq <= entry.seq:
            return PutOutcome.STALE
        server_id = record.server_id
        adding = self._pending.get(source, {})
        # A live row of unknown source (written before schema 2) is adopted by whoever refreshes it first.
        held = server_id in adding or (
            entry is not None
            and entry.envelope is not None
            and entry.expires > now
            and entry.source in (source, "")
        )
        if not held and self._at_quota(source, now):
            return PutOutcome.TOO_MANY_IDS
        new = entry is None and server_id not in self._pending_new
        if new and len(self._entries) + len(self._pending_new) >= self._max_records:
            return PutOutcome.FULL
        retain_until = now + self._max_ttl
        names = record.names
        # Counted as pending from here to the end of the write (no await between the checks and this).
        adding = self._pending.setdefault(source, adding)
        _count(adding, server_id, 1)
        if entry is None:
            _count(self._pending_new, server_id, 1)
        try:
            stored = await self._run(self._put_sync, record, retain_until, json.dumps(sorted(names)), source)
        finally:
            _count(adding, server_id, -1)
            if not adding:
                del self._pending[source]  # empty: no other write holds a count in it
            if entry is None:
                _count(self._pending_new, server_id, -1)
        if not stored:
            return PutOutcome.STALE
        # Re-read after the await: a concurrent put may have landed first; keep the highest seq.
        entry = self._entries.get(record.server_id)
        if entry is None or record.seq > entry.seq:
            self._set(
                record.server_id,
                _Entry(
                    seq=record.seq,
                    expires=record.expires,
                    retain_until=max(retain_until, entry.retain_until if entry else 0.0),
                    envelope=record.envelope,
                    names=names,
                    source=source,
                ),
            )
        return PutOutcome.STORED

    async def delete(self, request: DeleteRequest, *, now: float) -> DeleteOutcome:
        """Withdraw the live record of ``request.server_id`` if its seq is not newer than the request's."""
        entry = self._entries.get(request.server_id)
        if entry is None or entry.envelope is None or entry.expires <= now:
            return DeleteOutcome.NOT_FOUND
        if entry.seq > request.seq:
            return DeleteOutcome.STALE
        retain_until = now + self._max_ttl
        if not await self._run(self._delete_sync, request, retain_until):
            entry = self._entries.get(request.server_id)
            if entry is not None and entry.seq > request.seq:
                return DeleteOutcome.STALE
            return DeleteOutcome.NOT_FOUND
        entry = self._entries[request.server_id]
        self._tombstone(request.server_id, max(entry.seq, request.seq), max(entry.retain_until, retain_until))
        return DeleteOutcome.DELETED

    async def sweep(self, now: float) -> int:
        """Drop expired envelopes and forget rows past their retention; return how many rows changed."""
        changed = await self._run(self._sweep_sync, now)
        for server_id, entry in list(self._entries.items()):
            if entry.retain_until <= now:
                self._set(server_id, None)
            elif entry.envelope is not None and entry.expires <= now:
                self._tombstone(server_id, entry.seq, entry.retain_until)
        self.sweep_done.set()
        return changed

    def listing(
        self,
        *,
        now: float,
        name: str | None = None,
        server_id: bytes | None = None,
        after: bytes | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> bytes:
        """One page of ``GET /v1/records``: ``{"records":[envelope,…],"next":cursor|null}``.

        The live records matching the filters whose id sorts after ``after``, in id order, at most ``limit``
        of them and at most about :data:`PAGE_BYTES`; ``next`` is set only if more records follow.
        """
        candidates: Sequence[bytes]
        if server_id is not None:
            candidates = [server_id] if server_id in self._entries else []
        elif name is not None:
            candidates = self._by_name.get(name, [])
        else:
            candidates = self._live
        start = 0 if after is None else bisect.bisect_right(candidates, after)
        limit = max(1, min(limit, MAX_PAGE))
        page: list[bytes] = []
        size = 0
        last: bytes | None = None
        more = False
        for index in range(start, len(candidates)):  # index, not a slice: a slice would copy the tail
            entry = self._entries[candidates[index]]
            envelope = entry.envelope
            if envelope is None or entry.expires <= now or (name is not None and name not in entry.names):
                continue
            if len(page) >= limit or size + len(envelope) > PAGE_BYTES:
                more = True  # look-ahead: `next` is set only when a record really follows
                break
            page.append(envelope)
            size += len(envelope) + 1
            last = candidates[index]
        return _wrap(page, encode_cursor(last) if more and last is not None else None)


def _wrap(envelopes: list[bytes], cursor: str | None) -> bytes:
    tail = b'],"next":' + (b"null" if cursor is None else b'"' + cursor.encode("ascii") + b'"') + b"}"
    if not envelopes:
        return b'{"records":[' + tail
    # One join over the pieces: gluing the prefix and suffix onto the joined page would copy it twice more.
    pieces = [*envelopes]
    pieces[0] = b'{"records":[' + pieces[0]
    pieces[-1] = pieces[-1] + tail
    return b",".join(pieces)
