"""Stores: one record codec, compare-and-set commits, scan, one process per SQLite file,
write-through read cache, exact user count, background WAL checkpoints."""

from __future__ import annotations

import math
import sqlite3
import struct
import time

import numpy as np
import orjson
import pytest
from valkey_proc import ValkeyProcess

from recblr.runtime.store import (
    CORRUPT_CELL,
    MemoryStore,
    SQLiteStore,
    StoreError,
    UserState,
    decode_record,
    encode_record,
    open_store,
)


def _st(v: float, n: int = 1) -> UserState:
    return UserState(cell="c", state=np.full(1024, v, np.float32), n=n, recent=["1", "2"])


def _rev(got: dict, u: str):
    return got[u].rev if u in got else None


def _assert_reopens(path, users: int, user: str, first: float) -> None:
    """A fresh store on the file sees `users` users, `user`'s state starting with `first`."""
    s = SQLiteStore(path)
    assert s.count() == users and s.get_many([user])[user].state[0] == first
    s.close()


def test_record_round_trips():
    s = UserState(
        cell="k", state=np.arange(6, dtype=np.float32), seq=7, n=3, rev=2, recent=["a/b", "é"],
        top_items=np.array([3, 1], np.int64), top_scores=np.array([0.5, -1.0], np.float32),
    )  # fmt: skip
    t = decode_record(encode_record(s))
    assert (t.cell, t.seq, t.n, t.rev, t.recent) == ("k", 7, 3, 2, ["a/b", "é"])
    assert np.array_equal(t.state, s.state) and t.state.dtype == np.float32
    assert t.top_items.tolist() == [3, 1] and t.top_scores.tolist() == [0.5, -1.0]
    empty = decode_record(encode_record(UserState(cell="k", state=np.zeros(4, np.float32))))
    assert empty.top_items is None and empty.seq is None and empty.state.shape == (4,)
    assert empty.recent == []


RECENTS = {
    "digits": ["1", "1349", "0", "007", "42"],
    "digits, odd length": ["123"],
    "digits and empty ids": ["", "5", "", "", "60", ""],
    "only empty ids": ["", ""],
    "one empty id": [""],
    "hex letters and separators": ["1a2", "a", "f", "0f", "ff", "1,2", "b"],
    "NUL and 0xFF as text": ["\x00", "a\x00b", "\xff", "\x00\x00", ""],
    "any unicode": ["é", "😀", "١٢", "\u2028", "ÿ", "\U0010ffff", "a/b c"],
    "lone surrogates": ["\ud800", "\ud83d\ude00", "x\udfff"],
    "long ids": ["x" * 300, "9" * 1000],
}


@pytest.mark.parametrize("recent", RECENTS.values(), ids=RECENTS.keys())
def test_recent_ids_round_trip(recent):
    s = UserState(
        cell="k", state=np.ones(3, np.float32), seq=0, n=9, rev=4, recent=recent,
        top_items=np.array([2], np.int64), top_scores=np.array([1.5], np.float32),
    )  # fmt: skip
    t = decode_record(encode_record(s))
    assert t.recent == recent and all(type(x) is str for x in t.recent)
    assert (t.seq, t.n, t.rev, t.state.tolist(), t.top_items.tolist()) == (0, 9, 4, [1] * 3, [2])


def test_digit_ids_take_half_a_byte_a_digit():
    """The usual catalog (ids of digits) packs two digits a byte, so that a state of 1024
    floats with 200 recent ids of up to four digits stays in a leaf page and one overflow
    page of SQLite (a JSON list of them did not)."""
    ids = [str(i) for i in range(1000, 1200)]
    base = UserState(cell="k" * 64, state=np.zeros(1024, np.float32), n=200)
    with_ids = UserState(cell="k" * 64, state=np.zeros(1024, np.float32), n=200, recent=ids)
    chars = sum(map(len, ids)) + len(ids) - 1  # the digits and one separator between ids
    grown = len(encode_record(with_ids)) - len(encode_record(base))
    assert grown == 1 + math.ceil(chars / 2)
    text = [f"x{i}" for i in range(200)]  # any other ids: their UTF-8 and a byte each
    other = UserState(cell="k", state=np.zeros(1, np.float32), recent=text)
    empty = UserState(cell="k", state=np.zeros(1, np.float32))
    assert len(encode_record(other)) - len(encode_record(empty)) == 1 + sum(map(len, text)) + 199


def _v1(cell: str, state, seq, n, rev, recent, top=None) -> bytes:
    """An RBU1 record as the previous encoder wrote it: magic, JSON header length, the JSON
    header (recent as a list), the float32 state, then int64 top items and float32 scores."""
    k = -1 if top is None else len(top[0])
    head = orjson.dumps({"cell": cell, "seq": seq, "n": n, "rev": rev, "recent": recent, "k": k})
    raw = struct.pack("<4sI", b"RBU1", len(head)) + head + np.asarray(state, np.float32).tobytes()
    if top is not None:
        raw += np.asarray(top[0], np.int64).tobytes() + np.asarray(top[1], np.float32).tobytes()
    return raw


def test_old_format_records_still_decode(tmp_path):
    old = _v1("k", [1, 2, 3], 5, 7, 2, ["a/b", "é", "12"], ([4, 1], [0.5, -1.0]))
    t = decode_record(old)
    assert (t.cell, t.seq, t.n, t.rev, t.recent) == ("k", 5, 7, 2, ["a/b", "é", "12"])
    assert t.state.tolist() == [1, 2, 3] and t.top_items.tolist() == [4, 1]
    assert t.top_scores.tolist() == [0.5, -1.0]
    bare = decode_record(_v1("k", [0.25], None, 0, 1, []))
    assert bare.top_items is None and bare.seq is None and bare.recent == []
    # a file written by the previous version: read, and rewritten in the current format
    p = tmp_path / "s.db"
    SQLiteStore(p).close()
    db = sqlite3.connect(p)
    db.execute("INSERT INTO user_record VALUES ('u', 2, ?)", (old,))
    db.commit()
    db.close()
    s = SQLiteStore(p)
    got = s.get_many(["u"])["u"]
    assert got.recent == ["a/b", "é", "12"] and got.rev == 2
    got.recent = [*got.recent, "13"]
    assert s.commit({"u": (2, got)}) == set()
    s.close()
    db = sqlite3.connect(p)
    (raw,) = db.execute("SELECT record FROM user_record WHERE user = 'u'").fetchone()
    db.close()
    assert raw[:4] == b"RBU2" and decode_record(raw).recent == ["a/b", "é", "12", "13"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_commit_is_compare_and_set(kind, tmp_path):
    s = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")
    assert s.commit({"a": (None, _st(1)), "b": (None, _st(2))}) == set()
    got = s.get_many(["a", "b", "zz"])
    assert sorted(got) == ["a", "b"] and got["a"].rev == 1
    # a's compare holds, b's does not (b is at rev 1, not 5): only a is written
    assert s.commit({"a": (1, _st(3)), "b": (5, _st(4)), "c": (2, _st(5))}) == {"b", "c"}
    got = s.get_many(["a", "b", "c"])
    assert got["a"].rev == 2 and got["a"].state[0] == 3 and got["b"].state[0] == 2
    assert "c" not in got
    assert s.commit({"a": (None, _st(6))}) == {"a"}  # "absent" expected, but a exists
    assert s.delete("a") and s.commit({"a": (None, _st(7))}) == set()
    assert s.get_many(["a"])["a"].rev == 1
    s.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_scan_walks_every_user_once(kind, tmp_path):
    s = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")
    users = [f"u{i:03d}" for i in range(23)] + ["acme/alice"]
    s.commit({u: (None, _st(1)) for u in users})
    seen, cursor = [], 0
    while True:
        cursor, part = s.scan(cursor, 5)
        assert len(part) <= 5
        seen += part
        if cursor == 0:
            break
    assert sorted(seen) == sorted(users)
    s.close()


def test_two_stores_on_one_file_stay_correct(tmp_path):
    """Without the process lock (exclusive=False: no cache), the compare-and-set keeps two
    writers from overwriting each other's records."""
    p = tmp_path / "s.db"
    a, b = SQLiteStore(p, exclusive=False), SQLiteStore(p, exclusive=False)
    assert not a.commit({"u": (None, _st(1, n=1))})
    seen_by_a = a.get_many(["u"])["u"]
    assert not b.commit({"u": (1, _st(2, n=2))})
    assert a.commit({"u": (seen_by_a.rev, _st(3, n=2))}) == {"u"}  # a's read is stale
    assert a.get_many(["u"])["u"].n == 2 and a.count() == 1
    a.close(), b.close()


def test_second_process_on_one_file_is_refused(tmp_path):
    p = tmp_path / "s.db"
    s = SQLiteStore(p)
    with pytest.raises(StoreError, match="in use by process"):
        SQLiteStore(p)
    s.close()
    SQLiteStore(p).close()  # released on close


def _corrupt_records() -> dict[str, bytes]:
    good = encode_record(
        UserState(cell="k", state=np.ones(4, np.float32), recent=["12", "345"],
                  top_items=np.array([1], np.int64), top_scores=np.array([1.0], np.float32))
    )  # fmt: skip
    text = encode_record(UserState(cell="k", state=np.ones(4, np.float32), recent=["é", "x"]))
    head = struct.calcsize("<4sqqqiII") + 1  # the fixed header and the cell key "k"
    assert good[head : head + 1] == b"D" and text[head : head + 3] == b"T\xc3\xa9"
    return {
        "not a record": b"\x00\x01\x02\x03",
        "empty": b"",
        "header cut": good[:20],
        "cut in the recent ids": good[: head + 2],
        "cut in the arrays": good[:-3],
        "unknown recent block": good[:head] + b"X" + good[head + 1 :],
        "a letter among the digits": good[:head] + b"D\xbc" + good[head + 2 :],
        "bad UTF-8 in the ids": text[: head + 2] + b"(" + text[head + 3 :],  # "é" is c3 a9
        "RBU1 with a number among the ids": _v1("k", [1.0], None, 1, 1, ["1", 2]),
        "RBU1 without a field": _v1("k", [1.0], None, 1, 1, []).replace(b'"n"', b'"m"'),
        "RBU1 cut": _v1("k", [1.0, 2.0], None, 1, 1, ["1"], ([1], [1.0]))[:-5],
    }


def test_undecodable_record_is_marked_not_raised(tmp_path):
    p = tmp_path / "s.db"
    s = SQLiteStore(p)
    s.commit({"ok": (None, _st(1))})
    s.close()
    bad = _corrupt_records()
    db = sqlite3.connect(p)
    db.executemany("INSERT INTO user_record VALUES (?, 1, ?)", bad.items())
    db.commit()
    db.close()
    s = SQLiteStore(p)
    got = s.get_many(["ok", *bad])
    assert got["ok"].state[0] == 1
    for why in bad:
        assert (got[why].cell, got[why].rev) == (CORRUPT_CELL, 1), why
    s.close()


def test_cache_count_and_durability(tmp_path):
    p = tmp_path / "s.db"
    s = SQLiteStore(p, cache_users=2)
    assert not s.commit({u: (None, _st(v)) for u, v in (("a", 1), ("b", 2), ("c", 3))})
    assert s.count() == 3  # "a" fell out of the cache
    assert not s.commit({"a": (1, _st(4, 2)), "c": (1, _st(5, 2))})  # uncached + cached
    assert s.count() == 3
    got = s.get_many(["a", "b", "c", "zz"])
    assert sorted(got) == ["a", "b", "c"] and got["a"].n == 2 and got["c"].state[0] == 5
    assert s.delete("b") and not s.delete("b") and s.count() == 2
    assert "b" not in s.get_many(["b"])
    # every committed state is in the file, read by another connection (no cache involved)
    db = sqlite3.connect(p)
    rows = dict(db.execute("SELECT user, rev FROM user_record").fetchall())
    db.close()
    assert rows == {"a": 2, "c": 2}
    s.close()
    _assert_reopens(p, 2, "c", 5)


def test_background_checkpoint_keeps_wal_bounded(tmp_path):
    p = tmp_path / "s.db"
    wal = p.with_name(p.name + "-wal")
    s = SQLiteStore(p)

    def burst(i):
        for _ in range(50):
            cur = s.get_many([f"u{j}" for j in range(16)])
            s.commit({f"u{j}": (_rev(cur, f"u{j}"), _st(i)) for j in range(16)})

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
    _assert_reopens(p, 16, "u3", 3)


def test_wal_stays_bounded_under_continuous_writes(tmp_path):
    # background checkpoints race with the writer; the writer completes one now and then,
    # so the log restarts instead of growing with every write
    p = tmp_path / "s.db"
    wal = p.with_name(p.name + "-wal")
    s = SQLiteStore(p)
    s.CHECKPOINT_BYTES, s.WAL_RESET_BYTES = 64 << 10, 512 << 10
    biggest = 0
    for i in range(600):
        users = [f"u{(i * 8 + j) % 64}" for j in range(8)]
        cur = s.get_many(users)
        s.commit({u: (_rev(cur, u), _st(i)) for u in users})
        biggest = max(biggest, wal.stat().st_size)
    assert biggest < 4 << 20  # 600 * 8 states of 4 KiB each would be over 19 MiB
    s.close()
    _assert_reopens(p, 64, "u63", 599)


def test_open_store_passes_durability_to_redis(tmp_path):
    """`--durability full` on a Valkey store that fsyncs only every second is refused, as
    with RedisStore itself; "normal" accepts it."""
    v = ValkeyProcess(tmp_path / "valkey", appendfsync="everysec").start()
    try:
        with pytest.raises(StoreError, match="needs the server to fsync"):
            open_store(v.url, durability="full")
        s = open_store(v.url, durability="normal")
        assert s.kind != "sqlite" and s.server_durability == "appendfsync everysec"
        s.close()
    finally:
        v.stop()
