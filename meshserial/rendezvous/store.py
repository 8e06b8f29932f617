"""Durable record store for the rendezvous service: SQLite on disk, a dict in memory.

SQLite is the durable copy; every call to it runs on one dedicated worker thread (a single-thread executor
owns the connection), so the event loop never blocks on disk and statements are serialized without locks.
Reads are served from memory: the full listing is kept as ready-made JSON bytes and rebuilt only after a write
or when its earliest record expires, so ``GET /v1/records`` costs a dictionary lookup even with 10 000
records.

Rollback protection outlives a record.  Each row keeps the highest ``seq`` seen for an identity until
``retain_until`` = (last write) + ``max_ttl``: any older record that an attacker could replay was signed
before that write and therefore expires before ``retain_until``.  Expired records and deleted ones become
tombstones (no envelope, ``seq`` kept) until then, and the sweeper removes rows past ``retain_until``.  The
seq check is done in the SQL statement itself, so two concurrent writes for one identity cannot roll each
other back.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from meshserial.errors import ConfigError
from meshserial.proto.records import DeleteRequest, Record

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id BLOB PRIMARY KEY,          -- 32-byte Ed25519 public key
    seq INTEGER NOT NULL,         -- highest seq accepted (or deleted) for this id
    expires INTEGER NOT NULL,     -- record expiry, Unix seconds
    retain_until REAL NOT NULL,   -- keep seq (anti-rollback) until then
    envelope BLOB,                -- compact envelope JSON; NULL = tombstone
    names TEXT NOT NULL           -- JSON list of port names, for filtering
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_retain ON records(retain_until);
"""

_T = TypeVar("_T")


class PutOutcome(enum.Enum):
    STORED = "stored"
    STALE = "stale"  # seq not greater than the stored one: replay or rollback
    FULL = "full"


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
    names: frozenset[str]


class RecordStore:
    """Records by identity; open with :meth:`open`, close with :meth:`aclose`."""

    def __init__(self, path: Path | str, *, max_ttl: float, max_records: int) -> None:
        self._path = str(path)
        self._max_ttl = max_ttl
        self._max_records = max_records
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rendezvous-db")
        self._conn: sqlite3.Connection | None = None
        self._entries: dict[bytes, _Entry] = {}
        self._by_name: dict[str, set[bytes]] = {}  # port name -> ids of entries that list it
        self._listing: bytes | None = None
        self._listing_until = float("inf")
        self.sweep_done = asyncio.Event()  # set after each sweep; tests wait on it

    @classmethod
    async def open(cls, path: Path | str, *, max_ttl: float, max_records: int, now: float) -> RecordStore:
        """Open (creating if needed) the database at ``path`` and load the records still retained."""
        store = cls(path, max_ttl=max_ttl, max_records=max_records)
        try:
            rows = await store._run(store._open_sync, now)
        except BaseException:
            await store.aclose()
            raise
        for server_id, seq, expires, retain_until, envelope, names in rows:
            store._set(
                bytes(server_id),
                _Entry(
                    seq=seq,
                    expires=expires,
                    retain_until=retain_until,
                    envelope=None if envelope is None else bytes(envelope),
                    names=frozenset(json.loads(names)),
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

    def _open_sync(self, now: float) -> list[tuple[bytes, int, int, float, bytes | None, str]]:
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigError(f"rendezvous database {self._path} has a newer schema ({version})")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("DELETE FROM records WHERE retain_until <= ?", (now,))
            rows = conn.execute(
                "SELECT id, seq, expires, retain_until, envelope, names FROM records"
            ).fetchall()
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return rows

    def _put_sync(self, record: Record, retain_until: float, names: str) -> bool:
        cursor = self._db().execute(
            "INSERT INTO records (id, seq, expires, retain_until, envelope, names) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, expires = excluded.expires, "
            "retain_until = max(records.retain_until, excluded.retain_until), "
            "envelope = excluded.envelope, names = excluded.names "
            "WHERE excluded.seq > records.seq",
            (record.server_id, record.seq, record.expires, retain_until, record.envelope, names),
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
        """Replace (or with None, remove) the entry of ``server_id``, keeping the name index in step."""
        old = self._entries.pop(server_id, None)
        if old is not None:
            for name in old.names:
                ids = self._by_name[name]
                ids.discard(server_id)
                if not ids:
                    del self._by_name[name]
        if entry is not None:
            self._entries[server_id] = entry
            for name in entry.names:
                self._by_name.setdefault(name, set()).add(server_id)
        self._listing = None

    def _tombstone(self, server_id: bytes, seq: int, retain_until: float) -> None:
        entry = self._entries[server_id]
        self._set(
            server_id,
            _Entry(
                seq=seq, expires=entry.expires, retain_until=retain_until, envelope=None, names=frozenset()
            ),
        )

    def stored_seq(self, server_id: bytes) -> int | None:
        """Highest seq retained for ``server_id`` (live or tombstone), or None."""
        entry = self._entries.get(server_id)
        return None if entry is None else entry.seq

    def live_count(self, now: float) -> int:
        return sum(1 for e in self._entries.values() if e.envelope is not None and e.expires > now)

    async def put(self, record: Record, *, now: float) -> PutOutcome:
        """Store ``record`` (already verified) unless an equal or newer seq is retained."""
        entry = self._entries.get(record.server_id)
        if entry is not None and record.seq <= entry.seq:
            return PutOutcome.STALE
        if entry is None and len(self._entries) >= self._max_records:
            return PutOutcome.FULL
        retain_until = now + self._max_ttl
        names = record.names
        if not await self._run(self._put_sync, record, retain_until, json.dumps(sorted(names))):
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
        self._listing = None
        self.sweep_done.set()
        return changed

    def listing(self, *, now: float, name: str | None = None, server_id: bytes | None = None) -> bytes:
        """The JSON body of ``GET /v1/records``: ``{"records":[envelope,…]}`` with envelopes verbatim."""
        if server_id is not None:
            entry = self._entries.get(server_id)
            found = entry is not None and entry.envelope is not None and entry.expires > now
            selected = [entry] if found and entry and (name is None or name in entry.names) else []
            return _wrap(selected)
        if name is not None:
            matches = (self._entries[i] for i in self._by_name.get(name, ()))
            return _wrap([e for e in matches if e.envelope is not None and e.expires > now])
        if self._listing is None or now >= self._listing_until:
            live = [e for e in self._entries.values() if e.envelope is not None and e.expires > now]
            self._listing = _wrap(live)
            self._listing_until = min((e.expires for e in live), default=float("inf"))
        return self._listing


def _wrap(entries: list[_Entry]) -> bytes:
    envelopes = [e.envelope for e in entries if e.envelope is not None]
    if not envelopes:
        return b'{"records":[]}'
    # One join over the pieces: gluing the prefix and suffix onto a multi-megabyte string would copy it twice.
    envelopes[0] = b'{"records":[' + envelopes[0]
    envelopes[-1] = envelopes[-1] + b"]}"
    return b",".join(envelopes)
