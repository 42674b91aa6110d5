"""Per-user state stores: bounded in-memory LRU and a durable SQLite (WAL) store.

A store maps a user id to a `UserState`. `put_many` is atomic: the engine writes every state a
batch changed in one call, and only then answers the batch, so an acknowledged event is in the
store. SQLite in WAL mode commits by appending to the log; with `synchronous=NORMAL` a commit
survives the process being killed (kill -9) -- the OS already holds the bytes -- and with
`synchronous=FULL` (`--durability full`) it also survives power loss, at an fsync per batch.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class UserState:
    cell: str  # state key of the cell that produced `state` (CellInfo.state_key)
    state: np.ndarray  # float32 [S]
    seq: int | None = None  # the newest applied client sequence number, if clients send one
    n: int = 0  # events applied
    recent: list[int] = field(default_factory=list)  # last internal item ids, oldest first
    top_items: np.ndarray | None = None  # int64 [K] after the last event
    top_scores: np.ndarray | None = None  # float32 [K]


class StateStore(Protocol):
    def get_many(self, users: list[str]) -> dict[str, UserState]: ...
    def put_many(self, states: dict[str, UserState]) -> None: ...
    def delete(self, user: str) -> bool: ...
    def count(self) -> int: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
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

    def put_many(self, states: dict[str, UserState]) -> None:
        with self._lock:
            for u, s in states.items():
                self._d[u] = s
                self._d.move_to_end(u)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
                self.evicted += 1

    def delete(self, user: str) -> bool:
        with self._lock:
            return self._d.pop(user, None) is not None

    def count(self) -> int:
        return len(self._d)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_state (
    user TEXT PRIMARY KEY,
    cell TEXT NOT NULL,
    seq INTEGER,
    n INTEGER NOT NULL,
    state BLOB NOT NULL,
    recent BLOB NOT NULL,
    top_items BLOB,
    top_scores BLOB
) WITHOUT ROWID
"""


_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"


def _insert_sql(n: int) -> str:
    return (
        "INSERT OR REPLACE INTO user_state "
        "(user, cell, seq, n, state, recent, top_items, top_scores) VALUES " + ", ".join([_ROW] * n)
    )


def _raw(a, dtype) -> bytes:
    """The array's bytes as `dtype`, without a conversion when it already is one."""
    if isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous:
        return a.tobytes()
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


_I64 = np.dtype(np.int64)
_F32 = np.dtype(np.float32)


def _pack(s: UserState) -> tuple:
    return (
        s.cell,
        s.seq,
        s.n,
        _raw(s.state, _F32),
        np.asarray(s.recent, dtype=_I64).tobytes() if s.recent else b"",
        None if s.top_items is None else _raw(s.top_items, _I64),
        None if s.top_scores is None else _raw(s.top_scores, _F32),
    )


def _unpack(row) -> UserState:
    cell, seq, n, state, recent, ti, ts = row
    return UserState(
        cell=cell,
        seq=seq,
        n=n,
        state=np.frombuffer(state, dtype=np.float32).copy(),
        recent=np.frombuffer(recent, dtype=np.int64).tolist(),
        top_items=None if ti is None else np.frombuffer(ti, dtype=np.int64).copy(),
        top_scores=None if ts is None else np.frombuffer(ts, dtype=np.float32).copy(),
    )


class SQLiteStore:
    """Durable store in one SQLite file (WAL). One writer connection, guarded by a lock.

    Reads go through a bounded write-through LRU (`cache_users` states): a state enters it only
    once it is committed (or read back), so the cache never holds anything SQLite does not.
    WAL checkpoints run on a second connection in a background thread (`wal_autocheckpoint`
    is off on the writer), so a commit only appends to the log and never pays a checkpoint.
    """

    kind = "sqlite"
    ROWS_PER_STATEMENT = 256  # 8 parameters a row: well under SQLite's 32766
    CHECKPOINT_BYTES = 4 << 20  # wake the checkpointer after about this much was written
    WAL_RESET_BYTES = 16 << 20  # the writer completes a checkpoint after about this much

    def __init__(self, path: str | Path, durability: str = "normal", cache_users: int = 100_000):
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={durability.upper()}")
        self._db.execute(_SCHEMA)
        self._count = self._db.execute("SELECT COUNT(*) FROM user_state").fetchone()[0]
        self._cache: OrderedDict[str, UserState] = OrderedDict()
        self._cache_cap = max(0, int(cache_users))
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
            for i in range(0, len(miss), 500):
                part = miss[i : i + 500]
                q = (
                    "SELECT user, cell, seq, n, state, recent, top_items, top_scores "
                    f"FROM user_state WHERE user IN ({','.join('?' * len(part))})"
                )
                for row in self._db.execute(q, part):
                    s = _unpack(row[1:])
                    out[row[0]] = s
                    self._cache_put(row[0], s)
        return out

    def put_many(self, states: dict[str, UserState]) -> None:
        if not states:
            return
        rows = [(u, *_pack(s)) for u, s in states.items()]
        nbytes = sum(len(r[4]) + len(r[5]) + 200 for r in rows)
        with self._lock:
            # users in the cache are known to be in the table; only the others are counted
            unknown = [r[0] for r in rows if r[0] not in self._cache]
            if not unknown and len(rows) <= self.ROWS_PER_STATEMENT:
                # one multi-row statement is one atomic autocommit transaction, and one
                # sqlite3_step: the GIL is dropped and retaken once per batch, not per row
                self._db.execute(_insert_sql(len(rows)), [v for r in rows for v in r])
                before = 0
            else:
                before = self._put_txn(rows, unknown)
            self._count += len(unknown) - before
            for u, s in states.items():  # only after the commit
                self._cache_put(u, s)
            self._written += nbytes
            if self._written >= self.CHECKPOINT_BYTES:
                self._written = 0
                self._ckpt_wake.set()
            self._since_reset += nbytes
            if self._since_reset >= self.WAL_RESET_BYTES:
                self._finish_checkpoint()

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

    def _put_txn(self, rows: list[tuple], unknown: list[str]) -> int:
        """Write `rows` in one explicit transaction; returns how many `unknown` users were
        already in the table."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            before = 0
            for i in range(0, len(unknown), 500):
                part = unknown[i : i + 500]
                before += self._db.execute(
                    f"SELECT COUNT(*) FROM user_state WHERE user IN ({','.join('?' * len(part))})",
                    part,
                ).fetchone()[0]
            n = self.ROWS_PER_STATEMENT
            for i in range(0, len(rows), n):
                part = rows[i : i + n]
                self._db.execute(_insert_sql(len(part)), [v for r in part for v in r])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return before

    def delete(self, user: str) -> bool:
        with self._lock:
            self._cache.pop(user, None)
            cur = self._db.execute("DELETE FROM user_state WHERE user = ?", (user,))
            gone = cur.rowcount > 0
            self._count -= int(gone)
            return gone

    def count(self) -> int:
        return self._count

    def flush(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Checkpoint and close; a second call does nothing."""
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


def open_store(spec: str, durability: str = "normal", capacity: int = 1_000_000) -> StateStore:
    """'memory' -> MemoryStore(capacity); anything else is a SQLite file path."""
    if spec == "memory":
        return MemoryStore(capacity)
    path = spec[len("sqlite:") :] if spec.startswith("sqlite:") else spec
    return SQLiteStore(path, durability=durability)
