"""Per-user state stores: one record (`UserState`), one interface, three backends.

The record is what the server acknowledges: the cell state after the user's last applied event,
the newest client `seq`, which cell made it, how many events it holds, a revision number for
compare-and-set, and the user's most recent items as *external* ids (so a different cell, with
another vocabulary, can replay them; exclude-seen maps them to this cell's ids when it runs).

Every store implements `StateStore`:
- `get_many(users)` -> the records that exist;
- `commit({user: (expected_rev, record)})` -> the users whose compare failed. Per user and
  atomically, the record is written iff the stored revision equals `expected_rev` (None: the
  user must be absent); the stored record gets `rev = expected_rev + 1` (or 1). Nothing is
  written for a user whose compare failed; everything else is durable when it returns.
- `delete`, `count`, `scan` (a cursor walk over user ids for background sweeps), `flush`, `close`;
- `register_cell` / `cell_generations`: the order of cells on a store replicas share (a no-op
  where one process writes).

Backends: `MemoryStore` (bounded LRU, tests and caches), `SQLiteStore` (one file, WAL; one
process at a time, enforced by an advisory lock), and `recblr.runtime.redis_store.RedisStore`
(any number of replicas), chosen by `open_store(spec)`.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from recblr.runtime import jsonio
from recblr.runtime.errors import RuntimeUserError

DEFAULT_KEEP_HISTORY = 200
CORRUPT_CELL = "!corrupt"  # the `cell` of a record whose bytes could not be decoded


@dataclass
class UserState:
    """One user's record. `rev` is set by the store on every write (never by the caller)."""

    cell: str  # state key of the cell that produced `state` (CellInfo.state_key)
    state: np.ndarray  # float32 [S]
    seq: int | None = None  # the newest applied client sequence number, if clients send one
    n: int = 0  # events applied to `state`
    rev: int = 0  # record revision: 1 after the first write, +1 on every write
    recent: list[str] = field(default_factory=list)  # last external item ids, oldest first
    top_items: np.ndarray | None = None  # int64 [K] internal ids after the last event
    top_scores: np.ndarray | None = None  # float32 [K]


class StoreError(RuntimeUserError, status=503, code="store_unavailable"):
    """The state store cannot be opened or used as configured."""


class StateStore(Protocol):
    kind: str

    def get_many(self, users: list[str]) -> dict[str, UserState]: ...
    def commit(self, writes: dict[str, tuple[int | None, UserState]]) -> set[str]: ...
    def delete(self, user: str) -> bool: ...
    def count(self) -> int: ...
    def scan(self, cursor: int | str, count: int) -> tuple[int | str, list[str]]: ...
    def register_cell(self, key: str, name: str, newest: bool) -> int: ...
    def cell_generations(self, keys: list[str]) -> dict[str, tuple[int, str]]: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _OneProcessCells:
    """Cell order for stores only one process writes: there is no other replica whose cell
    could be newer, so no cell has a generation (every record's cell counts as older)."""

    def register_cell(self, key: str, name: str, newest: bool) -> int:
        return 0

    def cell_generations(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        return {}


# ----------------------------------------------------------------- the record's bytes
# RBU2: a fixed header, the cell key, the recent ids as one compact block, then the raw
# float32 state, int64 top items and float32 top scores. SQLite writes a record in whole
# pages (a leaf's share and overflow pages), so its size sets what a commit costs: as a JSON
# list (RBU1) the default 200 recent ids cost the record a second overflow page, written on
# every event. Digit-only ids (the usual catalog) take half a byte a digit here, any other
# ids their UTF-8 and one byte each.
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_MAGIC = b"RBU2"
# magic, seq (-1: none), n, rev, k (-1: no top-K), cell key bytes, recent block bytes
_HEAD = struct.Struct("<4sqqqiII")
_MAGIC_V1 = b"RBU1"  # read, never written: a JSON header (recent as a list) and the arrays
_HEAD_V1 = struct.Struct("<4sI")
_DIGITS = b"D"  # every id is ASCII digits: two digits a byte (hex nibbles), "a" between ids
_NOT_DIGITS = b"0123456789a"
_TEXT = b"T"  # any other ids: their UTF-8, byte 0xFF (which UTF-8 never holds) between ids
_SEP = b"\xff"


def _text(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")  # a lone surrogate is kept, as user ids are


def _pack_recent(ids: list[str]) -> bytes:
    """The recent ids as one block (empty for none); see `_unpack_recent`."""
    if not ids:
        return b""
    joined = "a".join(ids)
    if joined.isascii() and joined.count("a") == len(ids) - 1:
        if not joined.encode().translate(None, _NOT_DIGITS):  # digits and separators only
            return _DIGITS + bytes.fromhex(joined + "f" if len(joined) % 2 else joined)
    return _TEXT + _SEP.join([_text(x) for x in ids])


def _unpack_recent(block: bytes) -> list[str]:
    if not block:
        return []
    tag, body = block[:1], block[1:]
    if tag == _DIGITS:
        digits = body.hex()
        if digits.endswith("f"):
            digits = digits[:-1]
        if digits.encode().translate(None, _NOT_DIGITS):
            raise ValueError("corrupt recent items in a recblr user record")
        return digits.split("a")
    if tag != _TEXT:
        raise ValueError("corrupt recent items in a recblr user record")
    return [x.decode("utf-8", "surrogatepass") for x in body.split(_SEP)]


def encode_record(s: UserState) -> bytes:
    """One record as bytes (every persistent store writes exactly these; RBU2)."""
    state = s.state if s.state.dtype == _F32 else s.state.astype(_F32)
    k = -1 if s.top_items is None else len(s.top_items)
    cell, recent = _text(s.cell), _pack_recent(s.recent)
    seq = -1 if s.seq is None else s.seq
    parts = [_HEAD.pack(_MAGIC, seq, s.n, s.rev, k, len(cell), len(recent)), cell, recent]
    parts.append(state.tobytes())
    if k >= 0:
        parts.append(np.ascontiguousarray(s.top_items, dtype=_I64).tobytes())
        parts.append(np.ascontiguousarray(s.top_scores, dtype=_F32).tobytes())
    return b"".join(parts)


def _arrays(raw: bytes, start: int, k: int):
    """The state, top items and top scores that fill `raw` from `start` (each owns a copy)."""
    tail = len(raw) - start - (12 * k if k >= 0 else 0)
    if tail < 0 or tail % 4:
        raise ValueError("truncated recblr user record")
    state = np.frombuffer(raw[start : start + tail], _F32)
    ti = ts = None
    if k >= 0:
        p = start + tail
        ti = np.frombuffer(raw[p : p + 8 * k], _I64)
        ts = np.frombuffer(raw[p + 8 * k : p + 12 * k], _F32)
    return state, ti, ts


def decode_record(raw: bytes) -> UserState:
    """The inverse of `encode_record`; records written as RBU1 are read too. Raises
    ValueError (or KeyError, TypeError, struct.error) for bytes that are not a record."""
    magic = raw[:4]
    if magic == _MAGIC_V1:
        return _decode_v1(raw)
    if magic != _MAGIC:
        raise ValueError("not a recblr user record")
    _, seq, n, rev, k, n_cell, n_recent = _HEAD.unpack_from(raw)
    p = _HEAD.size
    q = p + n_cell + n_recent
    if q > len(raw) or k < -1:
        raise ValueError("truncated recblr user record")
    cell = raw[p : p + n_cell].decode("utf-8", "surrogatepass")
    recent = _unpack_recent(raw[p + n_cell : q])
    state, ti, ts = _arrays(raw, q, k)
    return UserState(
        cell=cell, state=state, seq=None if seq < 0 else seq, n=n, rev=rev, recent=recent,
        top_items=ti, top_scores=ts,
    )  # fmt: skip


def _decode_v1(raw: bytes) -> UserState:
    """An RBU1 record: the JSON header (cell, seq, n, rev, recent, k), then the arrays."""
    _, n = _HEAD_V1.unpack_from(raw)
    start = _HEAD_V1.size + n
    h = jsonio.loads(raw[_HEAD_V1.size : start])
    recent = h["recent"]
    if not isinstance(recent, list) or not all(isinstance(x, str) for x in recent):
        raise TypeError("recent items of a recblr user record must be strings")
    state, ti, ts = _arrays(raw, start, h["k"])
    return UserState(
        cell=h["cell"], state=state, seq=h["seq"], n=h["n"], rev=h["rev"], recent=recent,
        top_items=ti, top_scores=ts,
    )  # fmt: skip


def _after(cursor: int | str, keys, count: int) -> tuple[int | str, list[str]]:
    """The scan rule shared by the stores that walk user ids in sorted order: the cursor is
    the last id returned (0 starts); 0 comes back when the walk is done."""
    ks = sorted(k for k in keys if cursor == 0 or k > cursor)[: max(1, count)]
    return (ks[-1] if len(ks) == max(1, count) else 0), ks


class MemoryStore(_OneProcessCells):
    """Bounded LRU: holds at most `capacity` users; the least recently used is dropped."""

    kind = "memory"

    def __init__(self, capacity: int = 1_000_000):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._d: OrderedDict[str, UserState] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0

    def get_many(self, users: list[str]) -> dict[str, UserState]:
        out = {}
        with self._lock:
            for u in users:
                s = self._d.get(u)
                if s is not None:
                    self._d.move_to_end(u)
                    out[u] = s
        return out

    def commit(self, writes: dict[str, tuple[int | None, UserState]]) -> set[str]:
        failed = set()
        with self._lock:
            for u, (expected, s) in writes.items():
                cur = self._d.get(u)
                if (cur.rev if cur is not None else None) != expected:
                    failed.add(u)
                    continue
                s.rev = (expected or 0) + 1
                self._d[u] = s
                self._d.move_to_end(u)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
                self.evicted += 1
        return failed

    def delete(self, user: str) -> bool:
        with self._lock:
            return self._d.pop(user, None) is not None

    def count(self) -> int:
        return len(self._d)

    def scan(self, cursor: int | str, count: int) -> tuple[int | str, list[str]]:
        with self._lock:
            keys = list(self._d)
        return _after(cursor, keys, count)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_record (
    user TEXT PRIMARY KEY,
    rev INTEGER NOT NULL,
    record BLOB NOT NULL
) WITHOUT ROWID
"""
_ROW = "(?, ?, ?)"


def _insert_sql(n: int) -> str:
    return "INSERT OR REPLACE INTO user_record (user, rev, record) VALUES " + ", ".join([_ROW] * n)


def _migrate_v0(db: sqlite3.Connection) -> int:
    """Files written before the one-record schema hold a `user_state` table whose recent
    items are internal ids of an unknown cell: the states are kept (they still carry their
    cell key), the recent items are dropped. Returns how many users were moved."""
    has = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='user_state'"
    ).fetchone()
    if not has:
        return 0
    db.execute("BEGIN IMMEDIATE")
    try:
        rows = db.execute(
            "SELECT user, cell, seq, n, state, top_items, top_scores FROM user_state"
        ).fetchall()
        for user, cell, seq, n, state, ti, ts in rows:
            rec = UserState(
                cell=cell, state=np.frombuffer(state, _F32), seq=seq, n=n, rev=1,
                top_items=None if ti is None else np.frombuffer(ti, _I64),
                top_scores=None if ts is None else np.frombuffer(ts, _F32),
            )  # fmt: skip
            db.execute(_insert_sql(1), (user, 1, encode_record(rec)))
        db.execute("DROP TABLE user_state")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return len(rows)


class SQLiteStore(_OneProcessCells):
    """Durable store in one SQLite file (WAL). One writer connection, guarded by a lock.

    One process at a time: the file is locked (`flock` on `PATH.lock`) while the store is open,
    and a second process is refused with a `StoreError` naming the file; several replicas share
    a Redis/Valkey store instead. Because no other process writes, the bounded write-through
    LRU (`cache_users` records) is authoritative, and a commit whose users are all cached
    checks their revisions there and writes in one autocommit statement; other commits
    compare against the table inside one IMMEDIATE transaction. `exclusive=False` skips the
    lock and the cache (every compare goes to the table), for tools that open a live file.

    WAL is required: if the filesystem refuses it, the store refuses to open (the promise
    "an acknowledged event survives kill -9" rests on WAL's append-only commits). With
    `synchronous=NORMAL` a commit survives the process being killed; with `synchronous=FULL`
    (`--durability full`) it also survives power loss, at an fsync per batch. Checkpoints run
    on a second connection in a background thread, so a commit only appends to the log.
    """

    kind = "sqlite"
    ROWS_PER_STATEMENT = 256  # 3 parameters a row: well under SQLite's 32766
    CHECKPOINT_BYTES = 4 << 20  # wake the checkpointer after about this much was written
    WAL_RESET_BYTES = 16 << 20  # the writer completes a checkpoint after about this much

    def __init__(
        self,
        path: str | Path,
        durability: str = "normal",
        cache_users: int = 100_000,
        exclusive: bool = True,
    ):
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        self.path = Path(path)
        self.exclusive = exclusive
        self._lockfile = self._take_lock() if exclusive else None
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            self._db.close()
            self._release_lock()
            raise StoreError(
                f"state file {self.path}: SQLite cannot use WAL here (journal mode {mode!r}); "
                "put the state file on a local filesystem"
            )
        self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        self._db.execute(_SCHEMA)
        self.migrated = _migrate_v0(self._db)
        self._count = self._db.execute("SELECT COUNT(*) FROM user_record").fetchone()[0]
        self._cache: OrderedDict[str, UserState] = OrderedDict()
        self._cache_cap = max(0, int(cache_users)) if exclusive else 0
        self.cache_hits = 0
        self.cache_misses = 0
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA journal_size_limit={self.WAL_RESET_BYTES * 2}")
        self._written = 0
        self._since_reset = 0
        self._ckpt_wake = threading.Event()
        # Serialises the two checkpointers: SQLite answers BUSY to a second concurrent one.
        self._ckpt_lock = threading.Lock()
        self._ckpt_stop = False
        self._closed = False
        self._ckpt_conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._ckpt_conn.execute(f"PRAGMA synchronous={durability.upper()}")
        self.checkpoints = 0
        self._ckpt = threading.Thread(
            target=self._checkpointer, name="sqlite-checkpoint", daemon=True
        )
        self._ckpt.start()

    # ------------------------------------------------------------- one process per file
    def _take_lock(self):
        lock_path = self.path.with_name(self.path.name + ".lock")
        f = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise StoreError(
                f"state file {self.path} is in use by {holder}; one server per state file "
                "(stop the other, use another --state, or share a redis:// store)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}\n")
        f.flush()
        return f

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            self._lockfile.close()  # closing drops the flock
            self._lockfile = None

    # ------------------------------------------------------------- background checkpoints
    def _checkpointer(self) -> None:
        while True:
            self._ckpt_wake.wait(1.0)
            self._ckpt_wake.clear()
            if self._ckpt_stop:
                return
            try:
                with self._ckpt_lock:
                    self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except sqlite3.Error:
                pass  # busy or closing: the next wake retries; close() truncates anyway

    def _cache_put(self, u: str, s: UserState) -> None:
        if not self._cache_cap:
            return
        c = self._cache
        c[u] = s
        c.move_to_end(u)
        while len(c) > self._cache_cap:
            c.popitem(last=False)

    def _select(self, users: list[str], what: str):
        for i in range(0, len(users), 500):
            part = users[i : i + 500]
            q = f"SELECT user, {what} FROM user_record WHERE user IN ({','.join('?' * len(part))})"
            yield from self._db.execute(q, part)

    def get_many(self, users: list[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        if not users:
            return out
        uniq = list(dict.fromkeys(users))
        with self._lock:
            c = self._cache
            miss = []
            for u in uniq:
                s = c.get(u)
                if s is None:
                    miss.append(u)
                else:
                    c.move_to_end(u)
                    out[u] = s
            self.cache_hits += len(uniq) - len(miss)
            self.cache_misses += len(miss)
            for user, rev, raw in self._select(miss, "rev, record"):
                try:
                    s = decode_record(raw)
                except (ValueError, KeyError, TypeError, struct.error):
                    # unreadable bytes fail this user only (the engine answers corrupt_state)
                    s = UserState(cell=CORRUPT_CELL, state=np.empty(0, _F32), rev=rev)
                out[user] = s
                self._cache_put(user, s)
        return out

    def commit(self, writes: dict[str, tuple[int | None, UserState]]) -> set[str]:
        if not writes:
            return set()
        with self._lock:
            c = self._cache
            cached = self._cache_cap and len(writes) <= self.ROWS_PER_STATEMENT
            if cached and all(u in c for u in writes):
                # the cache is authoritative (no other writer): compare there, and write in
                # one multi-row statement = one autocommit transaction, one sqlite3_step
                failed = {u for u, (exp, _) in writes.items() if c[u].rev != exp}
                rows = self._rows(writes, failed)
                if rows:
                    self._db.execute(_insert_sql(len(rows)), [v for r in rows for v in r])
                added = 0
            else:
                failed, rows, added = self._commit_txn(writes)
            self._count += added
            for u, (_, s) in writes.items():  # only after the commit
                if u not in failed:
                    self._cache_put(u, s)
                else:
                    c.pop(u, None)  # a stale cached record is what made it fail: re-read
            nbytes = sum(len(r[2]) + 64 for r in rows)
            self._written += nbytes
            if self._written >= self.CHECKPOINT_BYTES:
                self._written = 0
                self._ckpt_wake.set()
            self._since_reset += nbytes
            if self._since_reset >= self.WAL_RESET_BYTES:
                self._finish_checkpoint()
        return failed

    @staticmethod
    def _rows(writes, failed) -> list[tuple]:
        rows = []
        for u, (exp, s) in writes.items():
            if u in failed:
                continue
            s.rev = (exp or 0) + 1
            rows.append((u, s.rev, encode_record(s)))
        return rows

    def _commit_txn(self, writes) -> tuple[set[str], list[tuple], int]:
        """Compare and write in one IMMEDIATE transaction (it holds the file's write lock
        from the compare to the commit). Returns (failed users, rows written, users added)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            stored = dict(self._select(list(writes), "rev"))
            failed = {u for u, (exp, _) in writes.items() if stored.get(u) != exp}
            rows = self._rows(writes, failed)
            n = self.ROWS_PER_STATEMENT
            for i in range(0, len(rows), n):
                part = rows[i : i + n]
                self._db.execute(_insert_sql(len(part)), [v for r in part for v in r])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        added = sum(1 for u, _, _ in rows if u not in stored)
        return failed, rows, added

    def _finish_checkpoint(self) -> None:
        """Under the writer lock: backfill what the background checkpoints have not yet (they
        race with the writer and so never quite catch up), so that the next write restarts
        the log from its start. Cheap: the background thread already copied nearly all of it.
        """
        with self._ckpt_lock:  # wait for a background checkpoint in flight instead of racing it
            try:
                busy, log, done = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                return  # the write itself is committed; the next batch tries again
        if not busy and log == done:
            self._since_reset = 0

    def delete(self, user: str) -> bool:
        with self._lock:
            self._cache.pop(user, None)
            cur = self._db.execute("DELETE FROM user_record WHERE user = ?", (user,))
            gone = cur.rowcount > 0
            self._count -= int(gone)
            return gone

    def count(self) -> int:
        if not self.exclusive:
            with self._lock:
                return self._db.execute("SELECT COUNT(*) FROM user_record").fetchone()[0]
        return self._count

    def scan(self, cursor: int | str, count: int) -> tuple[int | str, list[str]]:
        n = max(1, int(count))
        with self._lock:
            if cursor == 0:
                rows = self._db.execute(
                    "SELECT user FROM user_record ORDER BY user LIMIT ?", (n,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT user FROM user_record WHERE user > ? ORDER BY user LIMIT ?",
                    (str(cursor), n),
                ).fetchall()
        users = [r[0] for r in rows]
        return (users[-1] if len(users) == n else 0), users

    def flush(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Checkpoint, close and release the file; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        self._ckpt_stop = True
        self._ckpt_wake.set()
        self._ckpt.join(30)
        with self._lock:
            try:
                self._ckpt_conn.close()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()
                self._release_lock()


def open_store(spec: str, durability: str = "normal", capacity: int = 1_000_000) -> StateStore:
    """'memory' -> MemoryStore(capacity); 'redis://...' or 'valkey://...' -> RedisStore(url)
    (imported only then); anything else ('sqlite:PATH' or a path) -> SQLiteStore. The
    persistent stores both get `durability` ('full': an answered write survives power loss)."""
    if spec == "memory":
        return MemoryStore(capacity)
    if spec.startswith(("redis://", "rediss://", "valkey://", "valkeys://", "unix://")):
        from recblr.runtime.redis_store import RedisStore

        return RedisStore(spec, durability=durability)
    path = spec[len("sqlite:") :] if spec.startswith("sqlite:") else spec
    return SQLiteStore(path, durability=durability)
