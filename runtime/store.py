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
    cell: str  # sha256 of the cell that produced `state`
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


def _pack(s: UserState) -> tuple:
    return (
        s.cell,
        s.seq,
        s.n,
        np.ascontiguousarray(s.state, dtype=np.float32).tobytes(),
        np.asarray(s.recent, dtype=np.int64).tobytes(),
        None if s.top_items is None else np.asarray(s.top_items, np.int64).tobytes(),
        None if s.top_scores is None else np.asarray(s.top_scores, np.float32).tobytes(),
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
    """Durable store in one SQLite file (WAL). One connection, guarded by a lock."""

    kind = "sqlite"

    def __init__(self, path: str | Path, durability: str = "normal"):
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

    def get_many(self, users: list[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        if not users:
            return out
        uniq = list(dict.fromkeys(users))
        with self._lock:
            for i in range(0, len(uniq), 500):
                part = uniq[i : i + 500]
                q = (
                    "SELECT user, cell, seq, n, state, recent, top_items, top_scores "
                    f"FROM user_state WHERE user IN ({','.join('?' * len(part))})"
                )
                for row in self._db.execute(q, part):
                    out[row[0]] = _unpack(row[1:])
        return out

    def put_many(self, states: dict[str, UserState]) -> None:
        if not states:
            return
        rows = [(u, *_pack(s)) for u, s in states.items()]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                placeholders = ",".join("?" * len(rows))
                before = (
                    self._db.execute(
                        f"SELECT COUNT(*) FROM user_state WHERE user IN ({placeholders})",
                        [r[0] for r in rows],
                    ).fetchone()[0]
                    if len(rows) <= 900
                    else None
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO user_state "
                    "(user, cell, seq, n, state, recent, top_items, top_scores) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if before is None:
                self._count = self._db.execute("SELECT COUNT(*) FROM user_state").fetchone()[0]
            else:
                self._count += len(rows) - before

    def delete(self, user: str) -> bool:
        with self._lock:
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
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()


def open_store(spec: str, durability: str = "normal", capacity: int = 1_000_000) -> StateStore:
    """'memory' -> MemoryStore(capacity); anything else is a SQLite file path."""
    if spec == "memory":
        return MemoryStore(capacity)
    path = spec[len("sqlite:") :] if spec.startswith("sqlite:") else spec
    return SQLiteStore(path, durability=durability)
