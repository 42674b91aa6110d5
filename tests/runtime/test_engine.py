"""Engine: which stored states a cell accepts (keyed on the weights, not the file bytes)."""

from __future__ import annotations

from pathlib import Path

from recblr.runtime import Engine
from recblr.runtime.jsonio import Event
from recblr.runtime.store import MemoryStore

from .conftest import _export


def _copy_with_other_bytes(src: Path, dst: Path) -> Path:
    """The same weights and metadata in a file with other bytes (as another exporter writes)."""
    import onnx

    m = onnx.load(str(src))
    m.producer_version = (m.producer_version or "") + "+reexport"
    onnx.save(m, str(dst))
    return dst


def _shares_state(first: Path, second: Path) -> bool:
    store = MemoryStore()
    e1 = Engine(first, providers="cpu", store=store)
    e1.step(["u"], ["1001"])
    e2 = Engine(second, providers="cpu", store=store, keep_history=0)  # no replay: a reset
    shared = e2.get_state("u") is not None
    assert e2.stats.stale_states_reset == 0  # a read resets nothing
    first, second = e2.step(["u", "u"], ["1002", "1003"], seqs=[5, 6])
    # a reset is said in the answer and counted once per user, not per read or event
    assert first.reset == second.reset == (None if shared else "cell_changed")
    assert e2.stats.stale_states_reset == (0 if shared else 1)
    assert e2.step(["u"], ["1004"])[0].reset is None and e2.get_state("u").n == (4 if shared else 3)
    return shared


def test_same_weights_other_file_bytes_keep_states(cell, tmp_path):
    other = _copy_with_other_bytes(cell, tmp_path / "re.onnx")
    assert other.read_bytes() != cell.read_bytes()
    assert _shares_state(cell, other)


def test_other_weights_reset_states(cells):
    assert not _shares_state(cells["a"], cells["b"])


def test_same_model_other_top_k_keeps_states(cell, tmp_path):
    other = _export(tmp_path / "k5.onnx", 1, top_k=5)  # the model of cells["a"], K=5
    assert _shares_state(cell, other)


def test_non_finite_output_is_an_error_and_never_stored(cell):
    """A poisoned stored state gives that user a clear 500-class error; others are served."""
    import numpy as np

    from recblr.runtime.engine import Event
    from recblr.runtime.errors import NonFiniteOutput
    from recblr.runtime.store import UserState

    store = MemoryStore()
    eng = Engine(cell, providers="cpu", store=store)
    eng.step(["ok"], ["1001"])
    bad = np.full(eng.state_size, np.nan, dtype=np.float32)
    store.commit({"bad": (None, UserState(cell=eng.state_key, state=bad))})
    res = eng.apply([Event("bad", "1001"), Event("ok", "1002")])
    assert isinstance(res[0], NonFiniteOutput) and res[0].status == 500
    assert "bad" in str(res[0]) and "PUT its history" in str(res[0])
    assert res[1].items and all(np.isfinite(res[1].scores))
    assert np.isnan(eng.get_state("bad").state).all()  # the NaN answer was not stored over it
    assert eng.get_state("ok").n == 2
    assert eng.stats.events_applied == 2  # "ok" twice; "bad" not counted


def test_batch_rows_are_exact_and_own_their_memory():
    import numpy as np

    from recblr.runtime.engine import _own_rows, _stack_rows

    a = np.random.default_rng(0).standard_normal((5, 1024)).astype(np.float32)
    rows = _own_rows(a)
    assert len(rows) == 5 and all(r.dtype == np.float32 and r.shape == (1024,) for r in rows)
    assert all(np.array_equal(r, a[i]) and not np.shares_memory(r, a) for i, r in enumerate(rows))
    a[:] = 0  # the batch array is reused or freed: the users' states stay as they were
    assert not np.array_equal(rows[0], a[0])
    mixed = [rows[0], rows[1].astype(np.float64), np.zeros(1024, np.float32)]
    assert np.array_equal(_stack_rows(mixed), np.stack(mixed).astype(np.float32))


class _AnotherWriterThenFailure:
    """A real SQLite store on which another writer changes user "b" just before the first
    commit (so "b" loses its compare-and-set and is re-stepped), and the retry's commit fails."""

    def __init__(self, store, other):
        self._store, self._other, self.commits = store, other, 0

    def commit(self, writes):
        self.commits += 1
        if self.commits == 1:
            self._other.step(["b"], ["1003"])
        elif self.commits == 2:
            raise OSError("disk I/O error")
        return self._store.commit(writes)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_failed_retry_fails_only_the_re_stepped_users(cell, tmp_path):
    """User "a" is committed by the first attempt; only "b", re-stepped after a concurrent write,
    is answered as not applied when the retry's commit fails (nothing half-applied, nothing
    applied answered as failed)."""
    from recblr.runtime.errors import Conflict
    from recblr.runtime.store import SQLiteStore

    db = tmp_path / "s.db"
    other = Engine(cell, providers="cpu", store=SQLiteStore(db, exclusive=False))
    other.step(["b"], ["1001"])
    store = _AnotherWriterThenFailure(SQLiteStore(db, exclusive=False), other)
    engine = Engine(cell, providers="cpu", store=store)
    out = engine.apply([Event("a", "1001", 1), Event("b", "1002", 1)])
    assert store.commits == 2
    assert not isinstance(out[0], Exception) and out[0].applied is not False
    assert isinstance(out[1], Conflict) and "retry it" in str(out[1])
    assert engine.get_state("a").n == 1  # committed by the first attempt, answered as applied
    assert engine.get_state("b").n == 2 and engine.get_state("b").seq is None  # the other writer's two
    assert engine.step(["b"], ["1002"], seqs=[1])[0].applied is not False  # the retry applies it once
    assert engine.get_state("b").n == 3
    engine.close(), other.close()
