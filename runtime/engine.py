"""The engine: one ORT session of the cell, a state store, and batched per-user steps.

`Engine.apply(events)` applies a list of events in order. Events are grouped into waves in
which every user appears at most once; each wave is one ORT call, and a user's second event
lands in the next wave, so events of one user are applied in arrival order and never merged.
Every state the call changed is then written to the store in one atomic `put_many`, and only
then are results returned (an acknowledged event is in the store).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recblr.runtime import contract as C
from recblr.runtime.ann import OUTPUT_USER_VECTOR, retrieval_for
from recblr.runtime.cell import CellInfo, open_cell
from recblr.runtime.errors import BadEvent, NonFiniteOutput, UnknownItem, UnknownUser
from recblr.runtime.store import MemoryStore, StateStore, UserState

MAX_USER_BYTES = 256
UNKNOWN_POLICIES = ("error", "skip")


@dataclass
class Event:
    user: str
    item: str
    seq: int | None = None


@dataclass
class Recs:
    user: str
    items: list[str]
    scores: list[float]
    seq: int | None = None
    applied: bool = True
    reason: str | None = None  # why not applied: "duplicate" (seq not newer) or "unknown_item"

    def to_json(self) -> dict:
        d: dict = {"user": self.user, "items": self.items, "scores": self.scores}
        if self.seq is not None:
            d["seq"] = self.seq
        if not self.applied:
            d["applied"] = False
            d["reason"] = self.reason
        return d


# Between the ORT call and the SQLite write the engine thread should hold on to the GIL. numpy
# releases it for copies and ufunc loops over 500 elements; under micro-batching the event loop
# then takes it, and every such handoff leaves the GIL idle while the other thread wakes.
# np.stack, a .copy() per row and isfinite() over a batch of 1024-float states were tens of
# handoffs per batch; the byte copies below (tobytes, join, slicing) never release it, and the
# finiteness check is one row sum (one release per batch).


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of one length -> float32 [n, S], without releasing the GIL."""
    f32 = np.float32
    raw = b"".join([(r if r.dtype == f32 else r.astype(f32)).tobytes() for r in rows])
    return np.frombuffer(raw, np.float32).reshape(len(rows), -1)


def _own_rows(a: np.ndarray) -> list[np.ndarray]:
    """The rows of `a` as arrays that own their memory (a view would keep the whole batch
    alive for as long as one user's state is held), without releasing the GIL."""
    raw = a.tobytes()
    step = a.shape[1] * a.itemsize
    return [np.frombuffer(raw[i : i + step], dtype=a.dtype) for i in range(0, len(raw), step)]


@dataclass
class EngineStats:
    events_applied: int = 0
    events_duplicate: int = 0
    events_skipped: int = 0
    stale_states_reset: int = 0
    ort_calls: int = 0
    extra: dict = field(default_factory=dict)


def check_user(user) -> str:
    """A user id is a non-empty string (ints are accepted and turned into strings)."""
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        raise BadEvent("'user' must be a string (or an integer)")
    u = str(user)
    if not u:
        raise BadEvent("'user' must not be empty")
    if len(u.encode("utf-8")) > MAX_USER_BYTES:
        raise BadEvent(f"'user' is longer than {MAX_USER_BYTES} bytes")
    return u


def check_item(item) -> str:
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        raise BadEvent("'item' must be a string (or an integer)")
    return str(item)


class Engine:
    """Streams events through the cell and holds per-user state.

    Engine(onnx_path, providers="auto", store=None, exclude_seen=0, unknown_items="error")
    - providers: "auto" (CUDA when a GPU is really usable, else CPU), "cpu", "cuda" or a list.
    - store: a StateStore (default: an in-memory LRU).
    - exclude_seen: never recommend the user's last N items (0 = off).
    - unknown_items: "error" (raise UnknownItem) or "skip" (answer, do not apply).
    Thread-safe: all state changes go through one lock.
    """

    def __init__(
        self,
        onnx_path,
        providers="auto",
        store: StateStore | None = None,
        exclude_seen: int = 0,
        unknown_items: str = "error",
        threads: int | None = None,
    ):
        if unknown_items not in UNKNOWN_POLICIES:
            raise BadEvent(f"unknown-item policy must be one of {UNKNOWN_POLICIES}")
        if exclude_seen < 0:
            raise BadEvent("exclude_seen must be >= 0")
        self.session, self.info, self.providers = open_cell(onnx_path, providers, threads)
        self._ann = retrieval_for(self.session, self.info, threads)  # None: the cell scores itself
        self.store: StateStore = store if store is not None else MemoryStore()
        self.exclude_seen = exclude_seen
        self.unknown_items = unknown_items
        self.stats = EngineStats()
        self._lock = threading.RLock()
        info: CellInfo = self.info
        self._vocab = np.array(info.items, dtype=object)
        self._index = {ext: i for i, ext in enumerate(info.items) if i > 0}
        self._x = max(exclude_seen, 1)
        self._state_key = info.state_key

    # ----------------------------------------------------------------- metadata
    @property
    def top_k(self) -> int:
        return self.info.top_k

    @property
    def state_size(self) -> int:
        return self.info.state_size

    @property
    def n_items(self) -> int:
        return self.info.n_items

    @property
    def cell_hash(self) -> str:
        return self.info.sha256

    @property
    def state_key(self) -> str:
        """What a stored state must carry to be used by this cell (see CellInfo.state_key)."""
        return self._state_key

    def item_index(self, item: str) -> int | None:
        return self._index.get(item)

    def encode(self, items: Iterable, policy: str | None = None) -> list[int]:
        """External ids -> internal indices (unknown ones raise or are dropped per policy)."""
        policy = policy or self.unknown_items
        out = []
        for it in items:
            i = self._index.get(check_item(it))
            if i is None:
                if policy == "error":
                    raise UnknownItem(f"unknown item {str(it)!r}: not in the cell's vocabulary")
                continue
            out.append(i)
        return out

    def check_k(self, k: int | None) -> int:
        if k is None:
            return self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.top_k:
            raise BadEvent(f"k must be an integer in 1..{self.top_k} (the cell's K)")
        return k

    # ----------------------------------------------------------------- low level
    def _run(self, item: np.ndarray, state: np.ndarray, exclude: np.ndarray):
        self.stats.ort_calls += 1
        if self._ann is not None:
            ns, vec = self.session.run(
                [C.OUTPUT_NEXT_STATE, OUTPUT_USER_VECTOR], {C.INPUT_ITEM: item, C.INPUT_STATE: state}
            )
            ti, ts = self._ann(vec, exclude, self.top_k)
            return ns, ti, ts
        ns, ti, ts = self.session.run(
            [C.OUTPUT_NEXT_STATE, C.OUTPUT_TOP_ITEMS, C.OUTPUT_TOP_SCORES],
            {C.INPUT_ITEM: item, C.INPUT_STATE: state, C.INPUT_EXCLUDE: exclude},
        )
        return ns, ti, ts

    def _exclude_rows(self, recents: Sequence[Sequence[int]]) -> np.ndarray:
        ex = np.full((len(recents), self._x), -1, dtype=np.int64)
        n = self.exclude_seen
        if n:
            for r, rec in enumerate(recents):
                tail = list(rec)[-n:]
                if tail:
                    ex[r, : len(tail)] = tail
        return ex

    def _recs(self, user: str, st: UserState | None, k: int, seq=None) -> Recs:
        if st is None or st.top_items is None:
            return Recs(user, [], [], seq)
        ti = st.top_items[:k]
        return Recs(user, self._vocab[ti].tolist(), [float(x) for x in st.top_scores[:k]], seq)

    def _load(self, users: list[str]) -> dict[str, UserState]:
        got = self.store.get_many(users)
        fresh = {}
        for u, s in got.items():
            if s.cell != self._state_key or s.state.shape != (self.state_size,):
                self.stats.stale_states_reset += 1  # made by other weights: never fed to this cell
                continue
            fresh[u] = s
        return fresh

    def _empty(self) -> UserState:
        return UserState(cell=self._state_key, state=np.zeros(self.state_size, np.float32))

    # ----------------------------------------------------------------- streaming API
    def apply(self, events: Sequence[Event], k: int | None = None) -> list[Recs | Exception]:
        """Apply events in order; one result (Recs or the user error) per event."""
        k = self.check_k(k)
        results: list[Recs | Exception | None] = [None] * len(events)
        with self._lock:
            users = [e.user for e in events]
            states = self._load(list(dict.fromkeys(users)))
            changed: dict[str, UserState] = {}
            # waves: each user at most once per ORT call, in arrival order
            waves: list[list[tuple[int, int]]] = []
            nxt: dict[str, int] = {}
            for i, e in enumerate(events):
                idx = self._index.get(e.item)
                if idx is None:
                    if self.unknown_items == "error":
                        results[i] = UnknownItem(
                            f"unknown item {e.item!r}: not in the cell's vocabulary"
                        )
                    else:
                        results[i] = ("skip", None)  # answered after the waves
                    continue
                w = nxt.get(e.user, 0)
                nxt[e.user] = w + 1
                if w == len(waves):
                    waves.append([])
                waves[w].append((i, idx))
            for wave in waves:
                rows = []
                for i, idx in wave:
                    e = events[i]
                    st = states.get(e.user)
                    if (
                        e.seq is not None
                        and st is not None
                        and st.seq is not None
                        and e.seq <= st.seq
                    ):
                        self.stats.events_duplicate += 1
                        r = self._recs(e.user, st, k, e.seq)
                        r.applied, r.reason = False, "duplicate"
                        results[i] = r
                        continue
                    rows.append((i, idx, st if st is not None else self._empty()))
                if not rows:
                    continue
                item = np.array([idx for _, idx, _ in rows], dtype=np.int64)
                state = _stack_rows([st.state for _, _, st in rows])
                recents = [st.recent + [idx] for _, idx, st in rows]
                ns, ti, ts = self._run(item, state, self._exclude_rows(recents))
                # NaN/inf would be stored (poisoning the user for good) and answered as null. A
                # row's float64 sum is finite exactly when all of its float32 values are.
                sums = ns.sum(axis=1, dtype=np.float64) + ts.sum(axis=1, dtype=np.float64)
                broken = ~np.isfinite(sums)
                new_states = _own_rows(ns)
                keep = max(self.exclude_seen, 0)
                # the answers of the whole wave in two vectorized conversions
                rec_items = self._vocab[ti[:, :k]].tolist()
                rec_scores = ts[:, :k].tolist()
                cell = self._state_key
                for r, (i, _idx, st) in enumerate(rows):
                    e = events[i]
                    if broken[r]:
                        results[i] = NonFiniteOutput(
                            f"the cell gave NaN or infinite scores or state for user {e.user!r}; "
                            "the event was not applied. Reset the user (PUT its history or "
                            "DELETE it); if every user fails, re-export the cell from a sound "
                            "checkpoint"
                        )
                        continue
                    new = UserState(
                        cell=cell,
                        state=new_states[r],
                        seq=e.seq if e.seq is not None else st.seq,
                        n=st.n + 1,
                        recent=recents[r][-keep:] if keep else [],
                        top_items=ti[r].copy(),
                        top_scores=ts[r].copy(),
                    )
                    states[e.user] = new
                    changed[e.user] = new
                    results[i] = Recs(e.user, rec_items[r], rec_scores[r], e.seq)
                self.stats.events_applied += len(rows) - int(broken.sum())
            for i, r in enumerate(results):
                if isinstance(r, tuple):
                    e = events[i]
                    self.stats.events_skipped += 1
                    rec = self._recs(e.user, states.get(e.user), k, e.seq)
                    rec.applied, rec.reason = False, "unknown_item"
                    results[i] = rec
            self.store.put_many(changed)
        return results  # type: ignore[return-value]

    def step(self, users: Sequence[str], items: Sequence[str], seqs=None, k=None) -> list[Recs]:
        """One event per user (users may repeat: applied in order). Raises the first user error."""
        if len(users) != len(items):
            raise BadEvent("users and items must have the same length")
        seqs = seqs if seqs is not None else [None] * len(users)
        events = [
            Event(check_user(u), check_item(i), s)
            for u, i, s in zip(users, items, seqs, strict=False)
        ]
        out = self.apply(events, k)
        for r in out:
            if isinstance(r, Exception):
                raise r
        return out  # type: ignore[return-value]

    def recommend(self, user: str, k: int | None = None) -> Recs:
        """The user's current top-k (computed when their last event was applied)."""
        k = self.check_k(k)
        user = check_user(user)
        with self._lock:
            st = self._load([user]).get(user)
        if st is None:
            raise UnknownUser(f"no state for user {user!r}: send an event or PUT a history")
        return self._recs(user, st, k, st.seq)

    def get_state(self, user: str) -> UserState | None:
        with self._lock:
            return self._load([user]).get(user)

    def reset(self, user: str, history: Sequence, seq: int | None = None, k=None) -> Recs:
        """Replace the user's state with the one `history` (external ids, oldest first) makes."""
        k = self.check_k(k)
        user = check_user(user)
        idx = self.encode(history)
        if idx:
            state, ti, ts = self.encode_histories([idx])
            st = UserState(
                cell=self._state_key,
                state=state[0],
                seq=seq,
                n=len(idx),
                recent=idx[-self.exclude_seen :] if self.exclude_seen else [],
                top_items=ti[0],
                top_scores=ts[0],
            )
        else:
            st = self._empty()
            st.seq = seq
        with self._lock:
            self.store.put_many({user: st})
        return self._recs(user, st, k, seq)

    def forget(self, user: str) -> bool:
        user = check_user(user)
        with self._lock:
            return self.store.delete(user)

    def users_held(self) -> int:
        return self.store.count()

    def close(self) -> None:
        with self._lock:
            self.store.close()

    # ----------------------------------------------------------------- batch API
    def encode_histories(self, histories: Sequence[Sequence[int]]):
        """Run whole histories (internal ids) through the cell, all users stepped together.

        Returns (states [B,S], top_items [B,K] internal, top_scores [B,K]) after each
        history's last item. Empty histories get zero state and top_items -1.
        Every step runs the full cell (one ORT session): a state-only copy of the graph was
        measured to save nothing here (223 vs 222 users/s on ML-100K) while doubling memory.
        """
        B = len(histories)
        S, K = self.state_size, self.top_k
        states = np.zeros((B, S), np.float32)
        top_i = np.full((B, K), -1, np.int64)
        top_s = np.full((B, K), np.nan, np.float32)
        lens = np.array([len(h) for h in histories], dtype=np.int64)
        if B == 0 or lens.max() == 0:
            return states, top_i, top_s
        order = np.argsort(-lens, kind="stable")
        sl = lens[order]
        T = int(sl[0])
        mat = np.zeros((B, T), np.int64)
        for r, j in enumerate(order):
            h = histories[j]
            if len(h):
                mat[r, : len(h)] = h
        st = np.zeros((B, S), np.float32)
        dummy_ex = np.full((B, 1), -1, np.int64)
        # prefix-active counts: rows with length >= t+2 still have a non-final item at t
        for t in range(T - 1):
            n = int(np.searchsorted(-sl, -(t + 2), side="right"))
            if n == 0:
                break
            ns, _, _ = self._run(mat[:n, t], st[:n], dummy_ex[:n])
            st[:n] = ns
        m = int((sl > 0).sum())
        last = mat[np.arange(m), sl[:m] - 1]
        n = self.exclude_seen
        ex = np.full((m, self._x), -1, np.int64)
        if n:
            for r in range(m):
                L = int(sl[r])
                tail = mat[r, max(0, L - n) : L]
                ex[r, : len(tail)] = tail
        ns, ti, ts = self._run(last, st[:m], ex)
        st[:m] = ns
        rows = order[:m]
        states[order] = st
        top_i[rows] = ti
        top_s[rows] = ts
        return states, top_i, top_s

    def decode(self, internal: np.ndarray) -> list[str]:
        return [self.info.items[i] for i in internal if i > 0]
