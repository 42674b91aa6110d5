"""SQLiteStore: write-through read cache, exact user count, background WAL checkpoints."""

from __future__ import annotations

import sqlite3
import time

import numpy as np

from recblr.runtime.store import SQLiteStore, UserState


def _st(v: float, n: int = 1) -> UserState:
    return UserState(cell="c", state=np.full(1024, v, np.float32), n=n, recent=[1, 2])


def test_cache_count_and_durability(tmp_path):
    p = tmp_path / "s.db"
    s = SQLiteStore(p, cache_users=2)
    s.put_many({"a": _st(1), "b": _st(2), "c": _st(3)})  # "a" falls out of the cache
    assert s.count() == 3
    s.put_many({"a": _st(4, 2), "c": _st(5, 2)})  # one uncached user, one cached: no new rows
    assert s.count() == 3
    got = s.get_many(["a", "b", "c", "zz"])
    assert sorted(got) == ["a", "b", "c"] and got["a"].n == 2 and got["c"].state[0] == 5
    assert s.delete("b") and not s.delete("b") and s.count() == 2
    assert "b" not in s.get_many(["b"])
    # every committed state is in the file, read by another connection (no cache involved)
    db = sqlite3.connect(p)
    rows = dict(db.execute("SELECT user, n FROM user_state").fetchall())
    db.close()
    assert rows == {"a": 2, "c": 2}
    s.close()
    s2 = SQLiteStore(p)
    assert s2.count() == 2 and s2.get_many(["c"])["c"].state[0] == 5
    s2.close()


def test_background_checkpoint_keeps_wal_bounded(tmp_path):
    p = tmp_path / "s.db"
    wal = p.with_name(p.name + "-wal")
    s = SQLiteStore(p)

    def burst(i):
        for _ in range(50):
            s.put_many({f"u{j}": _st(i) for j in range(16)})

    def checkpointed():
        n, s._written = s.checkpoints, 0
        s._ckpt_wake.set()
        t0 = time.time()
        while s.checkpoints == n and time.time() - t0 < 10:
            time.sleep(0.02)
        assert s.checkpoints > n

    burst(0)
    checkpointed()
    size = wal.stat().st_size
    for i in range(1, 4):  # every burst after a checkpoint reuses the log from its start
        burst(i)
        checkpointed()
    assert wal.stat().st_size <= size * 1.2
    s.close()
    assert not wal.exists() or wal.stat().st_size == 0
    s2 = SQLiteStore(p)
    assert s2.count() == 16 and s2.get_many(["u3"])["u3"].state[0] == 3
    s2.close()


def test_wal_stays_bounded_under_continuous_writes(tmp_path):
    # background checkpoints race with the writer; the writer completes one now and then,
    # so the log restarts instead of growing with every write
    p = tmp_path / "s.db"
    wal = p.with_name(p.name + "-wal")
    s = SQLiteStore(p)
    s.CHECKPOINT_BYTES, s.WAL_RESET_BYTES = 64 << 10, 512 << 10
    biggest = 0
    for i in range(600):
        s.put_many({f"u{(i * 8 + j) % 64}": _st(i) for j in range(8)})
        biggest = max(biggest, wal.stat().st_size)
    assert biggest < 4 << 20  # 600 * 8 states of 4 KiB each would be over 19 MiB
    s.close()
    s2 = SQLiteStore(p)
    assert s2.count() == 64 and s2.get_many(["u63"])["u63"].state[0] == 599
    s2.close()
