"""The engine: one ORT session of the cell, a state store, and batched per-user steps.

`Engine.apply(events)` applies a list of events in order. Events are grouped into waves in
which every user appears at most once; each wave is one ORT call, and a user's second event
lands in the next wave, so events of one user are applied in arrival order and never merged.
Every record the call changed is then written with one `StateStore.commit` (compare-and-set
on each record's revision), and only then are results returned: an acknowledged event is in
the store. A user whose compare failed (another process wrote the record meanwhile) is
re-read and their events re-stepped, a few times, then answered with a `Conflict` (503).

A record made by another cell is rebuilt for this one by replaying its stored recent items
(`migrate`), unless the store's cell order (`register_cell`, `cell_generations`: kept by a
shared Valkey/Redis store) says the record's cell is newer than this one: while replicas are reloaded
one at a time, an old replica answers such a user `NewerCell` (503) instead of migrating it
back, so no user ping-pongs between two cells.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from recblr.runtime import contract as C
from recblr.runtime.ann import OUTPUT_USER_VECTOR, AnnTopK, retrieval_for
from recblr.runtime.cell import CellInfo, open_cell
from recblr.runtime.errors import (
    BadEvent,
    CellError,
    Conflict,
    CorruptState,
    NonFiniteOutput,
    RuntimeUserError,
    UnknownItem,
    UnknownUser,
)
from recblr.runtime.jsonio import Event, check_item, check_user
from recblr.runtime.store import (
    CORRUPT_CELL,
    DEFAULT_KEEP_HISTORY,
    MemoryStore,
    StateStore,
    UserState,
)

UNKNOWN_POLICIES = ("error", "skip")


class NewerCell(RuntimeUserError, status=503, code="newer_cell"):
    """The user's record was made by a cell newer than this replica's: reload the replica
    (another replica on the new cell can serve the user; a load balancer may retry there)."""


@dataclass
class Recs:
    user: str
    items: list[str]
    scores: list[float]
    seq: int | None = None
    applied: bool = True
    reason: str | None = None  # why not applied: "duplicate" (seq not newer) or "unknown_item"
    reset: str | None = None  # "cell_changed": the stored state was dropped before this answer
    cell: str | None = None  # short hash of the cell that made the answer

    def to_json(self) -> dict:
        d: dict = {"user": self.user, "items": self.items, "scores": self.scores}
        if self.cell is not None:
            d["cell"] = self.cell
        if self.seq is not None:
            d["seq"] = self.seq
        if not self.applied:
            d["applied"] = False
            d["reason"] = self.reason
        if self.reset is not None:
            d["reset"] = self.reset
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


@dataclass(frozen=True)
class LoadedCell:
    """An opened, checked cell: what `Engine.swap` installs."""

    session: object  # onnxruntime.InferenceSession
    info: CellInfo
    providers: list[str]
    ann: AnnTopK | None = None  # a retrieval cell's index; None: the cell scores itself

    def run(self, item: np.ndarray, state: np.ndarray, exclude: np.ndarray):
        """(next_state, top_items, top_scores) for one batch, from the cell or its index."""
        if self.ann is not None:
            ns, vec = self.session.run(
                [C.OUTPUT_NEXT_STATE, OUTPUT_USER_VECTOR],
                {C.INPUT_ITEM: item, C.INPUT_STATE: state},
            )
            ti, ts = self.ann(vec, exclude, self.info.top_k)
            return ns, ti, ts
        return self.session.run(
            [C.OUTPUT_NEXT_STATE, C.OUTPUT_TOP_ITEMS, C.OUTPUT_TOP_SCORES],
            {C.INPUT_ITEM: item, C.INPUT_STATE: state, C.INPUT_EXCLUDE: exclude},
        )


@dataclass
class EngineStats:
    events_applied: int = 0
    events_duplicate: int = 0
    events_skipped: int = 0
    events_failed: int = 0
    stale_states_reset: int = 0  # users whose record from another cell was replaced
    users_migrated: int = 0  # users whose record from another cell was rebuilt by replay
    migration_items_skipped: int = 0  # replayed items the new cell's vocabulary lacks
    commit_conflicts: int = 0  # users whose compare-and-set failed (then retried)
    ort_calls: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class _Slot:
    """One user's record while an `apply` runs: what the store held and what will replace it."""

    expected: int | None  # the stored revision (None: no record): the commit's compare
    st: UserState  # the record as of the events applied so far
    reset: str | None = None  # why the stored record was dropped ("cell_changed")
    migrated: bool = False  # the record was made by another cell and rebuilt by replay
    error: Exception | None = None  # once set, the user's later events in this apply fail
    changed: bool = False
    applied: int = 0


class Engine:
    """Streams events through the cell and holds per-user state.

    Engine(onnx_path, providers="auto", store=None, exclude_seen=0, unknown_items="error",
           keep_history=200)
    - providers: "auto" (CUDA when a GPU is really usable, else CPU), "cpu", "cuda" or a list.
    - store: a StateStore (default: an in-memory LRU).
    - exclude_seen: never recommend the user's last N items (0 = off).
    - unknown_items: "error" (raise UnknownItem) or "skip" (answer, do not apply).
    - keep_history: recent items kept per user (max(keep_history, exclude_seen)), as external
      ids, for exclude-seen and for replaying a user through another cell.
    Thread-safe: all state changes go through one lock.
    """

    COMMIT_ATTEMPTS = 4  # a user whose compare-and-set fails this often gets a Conflict
    REPLAY_SLICE = 256  # positions of a history replayed per turn (see `reset_steps`)

    def __init__(
        self,
        onnx_path,
        providers="auto",
        store: StateStore | None = None,
        exclude_seen: int = 0,
        unknown_items: str = "error",
        threads: int | None = None,
        keep_history: int = DEFAULT_KEEP_HISTORY,
    ):
        if unknown_items not in UNKNOWN_POLICIES:
            raise BadEvent(f"unknown-item policy must be one of {UNKNOWN_POLICIES}")
        if exclude_seen < 0:
            raise BadEvent("exclude_seen must be >= 0")
        if keep_history < 0:
            raise BadEvent("keep_history must be >= 0")
        self.exclude_seen = exclude_seen
        self.threads = threads
        self._x = max(exclude_seen, 1)
        self._install(self.open_cell(onnx_path, providers))
        self.store: StateStore = store if store is not None else MemoryStore()
        self._register(newest=False)
        self.keep_history = max(keep_history, exclude_seen)
        self.unknown_items = unknown_items
        self.stats = EngineStats()
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- the cell
    def open_cell(self, onnx_path, providers=None) -> LoadedCell:
        """Open and check a cell for this engine, without touching the one serving: the
        contract's metadata and graph (`open_cell`), room for exclude-seen, and one batched
        step whose outputs must have the cell's shapes and be finite. Raises CellError."""
        providers = providers if providers is not None else self.providers
        session, info, used = open_cell(onnx_path, providers, self.threads)
        if self.exclude_seen + info.top_k > info.n_items:
            raise BadEvent(
                f"--exclude-seen {self.exclude_seen} with the cell's K={info.top_k} needs at "
                f"least {self.exclude_seen + info.top_k} items, and the cell has {info.n_items}: "
                f"lower --exclude-seen to at most {info.n_items - info.top_k}"
            )
        cell = LoadedCell(session, info, used, retrieval_for(session, info, self.threads))
        b = min(2, info.n_items)
        try:
            ns, ti, ts = cell.run(
                np.arange(1, b + 1, dtype=np.int64),
                np.zeros((b, info.state_size), np.float32),
                np.full((b, self._x), -1, np.int64),
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise CellError(f"{info.path}: the cell fails a test step: {e}") from None
        if ns.shape != (b, info.state_size) or ti.shape != (b, info.top_k) or ts.shape != ti.shape:
            raise CellError(
                f"{info.path}: the cell's outputs do not have the shapes its metadata declares "
                f"(state {info.state_size}, K={info.top_k}); re-export the cell"
            )
        if not (np.isfinite(ns).all() and np.isfinite(ts).all()):
            raise CellError(
                f"{info.path}: the cell gives NaN or infinite outputs on a test step; re-export "
                "it from a sound checkpoint"
            )
        if ((ti < 1) | (ti > info.n_items)).any():
            raise CellError(f"{info.path}: the cell recommends ids outside its vocabulary")
        return cell

    def _install(self, cell: LoadedCell) -> None:
        self.cell = cell
        self.session, self.info, self.providers = cell.session, cell.info, cell.providers
        self._vocab = np.array(cell.info.items, dtype=object)
        self._index = {ext: i for i, ext in enumerate(cell.info.items) if i > 0}
        self._state_key = cell.info.state_key

    def swap(self, cell: LoadedCell) -> CellInfo:
        """Serve `cell` from the next batch on; returns the info of the cell it replaces.
        Takes the engine's lock, so the switch falls between two batches: a batch (and a
        replay slice) runs on one cell from start to end."""
        with self._lock:
            old = self.info
            if cell.info.state_key != old.state_key:
                self._register(newest=True, info=cell.info)
            self._install(cell)
        return old

    def _register(self, newest: bool, info: CellInfo | None = None) -> None:
        """Give the cell its place in the store's cell order (stores shared by replicas keep
        one): at start only if it has none, on a swap as the newest."""
        info = info or self.info
        self.store.register_cell(info.state_key, info.short_hash, newest)

    # ----------------------------------------------------------------- metadata
    top_k = property(lambda self: self.info.top_k, doc="The cell's K (most items per answer).")
    state_size = property(lambda self: self.info.state_size, doc="Floats in one user's state.")
    n_items = property(lambda self: self.info.n_items, doc="The cell's catalog size.")
    cell_hash = property(lambda self: self.info.sha256, doc="sha256 of the cell's ONNX bytes.")

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
        return self.cell.run(item, state, exclude)

    def _exclude_rows(self, recents: Sequence[Sequence[str]]) -> np.ndarray:
        """The last `exclude_seen` items of each user (external ids) as this cell's ids."""
        ex = np.full((len(recents), self._x), -1, dtype=np.int64)
        n = self.exclude_seen
        if n:
            index = self._index
            for r, rec in enumerate(recents):
                tail = [index.get(x, -1) for x in rec[-n:]]
                if tail:
                    ex[r, : len(tail)] = tail
        return ex

    def _recs(self, user: str, st: UserState | None, k: int, seq=None) -> Recs:
        cell = self.info.short_hash
        if st is None or st.top_items is None:
            return Recs(user, [], [], seq, cell=cell)
        ti = st.top_items[:k]
        scores = [float(x) for x in st.top_scores[:k]]
        return Recs(user, self._vocab[ti].tolist(), scores, seq, cell=cell)

    def _empty(self, seq: int | None = None) -> UserState:
        return UserState(cell=self._state_key, state=np.zeros(self.state_size, np.float32), seq=seq)

    def _slot(self, user: str, s: UserState | None) -> _Slot:
        """What a stored record means to this cell: usable, made by another cell (dropped,
        keeping its seq so that retries stay duplicates), or unreadable (the user fails)."""
        if s is None:
            return _Slot(None, self._empty())
        if s.cell == CORRUPT_CELL or (
            s.cell == self._state_key and s.state.shape != (self.state_size,)
        ):
            err = CorruptState(
                f"the stored state of user {user!r} cannot be read by this cell "
                f"({s.state.size} floats, the cell's state has {self.state_size}); nothing was "
                "applied. Reset the user (PUT its history or DELETE it)"
            )
            return _Slot(s.rev, s, error=err)
        if s.cell != self._state_key:
            return _Slot(s.rev, self._empty(s.seq), reset="cell_changed", changed=True)
        return _Slot(s.rev, s)

    def _load(self, users: list[str]) -> dict[str, _Slot]:
        got = self.store.get_many(users)
        slots = {u: self._slot(u, got.get(u)) for u in users}
        stale = [u for u, sl in slots.items() if sl.reset is not None]
        if stale:
            stale = self._older_only(stale, got, slots)
        if stale and self.keep_history:
            self._migrate_slots([(got[u], slots[u]) for u in stale])
        return slots

    def _older_only(self, stale: list[str], got: dict, slots: dict[str, _Slot]) -> list[str]:
        """The stale users whose record this cell may replace: on a store that orders cells,
        a record of a newer cell fails its user with NewerCell instead (one round trip for
        the batch). A cell the store has no generation for counts as older."""
        key = self._state_key
        gens = self.store.cell_generations([key, *{got[u].cell for u in stale}])
        mine = gens.get(key, (0, ""))[0]
        older = []
        for u in stale:
            s = got[u]
            gen, name = gens.get(s.cell, (0, ""))
            if gen <= mine:
                older.append(u)
                continue
            slots[u] = _Slot(
                s.rev,
                s,
                error=NewerCell(
                    f"user {u!r}'s state was made by newer cell {name}; this replica serves "
                    f"{self.info.short_hash}: reload this replica (POST /admin/reload or SIGHUP)"
                ),
            )
        return older

    def _migrate_slots(self, stale: list[tuple[UserState, _Slot]]) -> None:
        """Rebuild records made by another cell by replaying their stored recent items through
        this cell, all users stepped together; items this vocabulary lacks are skipped. The
        record keeps its seq and its history; a user with nothing left to replay stays reset."""
        hists, todo = [], []
        for old, sl in stale:
            idx = self.encode(old.recent, "skip")
            self.stats.migration_items_skipped += len(old.recent) - len(idx)
            if idx:
                hists.append(idx)
                todo.append((old, sl))
        if not hists:
            return
        states, ti, ts = self.encode_histories(hists)
        fine = np.isfinite(states).all(axis=1) & np.isfinite(ts).all(axis=1)
        rows = _own_rows(states)
        for r, (old, sl) in enumerate(todo):
            if not fine[r]:
                continue  # stays reset: a NaN state is never stored
            sl.st = UserState(
                cell=self._state_key,
                state=rows[r],
                seq=old.seq,
                n=len(hists[r]),
                rev=old.rev,
                recent=list(old.recent[-self.keep_history :]),
                top_items=ti[r].copy(),
                top_scores=ts[r].copy(),
            )
            sl.reset, sl.migrated = None, True

    def migrate(self, users: Sequence[str]) -> int:
        """Rebuild these users' records for this cell now, by replay, and store them; returns
        how many were rewritten. A record with no history to replay is left as it is (the
        user's next event resets it and its answer says so). The background sweep after a
        reload calls this a slice of users at a time."""
        with self._lock:
            slots = self._load(list(dict.fromkeys(users)))
            writes = {u: (sl.expected, sl.st) for u, sl in slots.items() if sl.migrated}
            if not writes:
                return 0
            lost = self.store.commit(writes)
            self._count_moves(slots, lost)
        return len(writes) - len(lost)

    def stale_users(self, users: Sequence[str]) -> list[str]:
        """Of `users`, those whose stored record another cell made: the sweep's check of a
        whole scan page, without the engine's lock (`migrate` re-reads them under it)."""
        key = self._state_key
        got = self.store.get_many(list(dict.fromkeys(users)))
        return [u for u, s in got.items() if s.cell not in (key, CORRUPT_CELL)]

    def _count_moves(self, slots: dict[str, _Slot], lost: set[str]) -> None:
        for u, sl in slots.items():
            if u not in lost:
                self.stats.users_migrated += int(sl.migrated)
                self.stats.stale_states_reset += int(sl.reset is not None)

    # ----------------------------------------------------------------- streaming API
    def apply(self, events: Sequence[Event], k: int | None = None) -> list[Recs | Exception]:
        """Apply events in order; one result per event: a Recs (applied, or answered without
        being applied: a duplicate seq, a skipped unknown item) or the user error that kept it
        from being applied. Each event stands alone: errors never undo other events."""
        k = self.check_k(k)
        results: list[Recs | Exception | None] = [None] * len(events)
        pending = list(range(len(events)))
        why = "another writer kept changing the record while this event was applied; nothing was applied"
        with self._lock:
            for attempt in range(self.COMMIT_ATTEMPTS):
                try:
                    lost = self._apply_once(events, pending, k, results)
                except Exception as e:
                    if attempt == 0:
                        raise  # nothing of these events is stored: the caller answers the error
                    # an earlier attempt committed its other users: only the re-stepped ones failed
                    why = f"not applied ({type(e).__name__}: {e}) while re-applying after a concurrent write"
                    break
                if not lost:
                    return results  # type: ignore[return-value]
                self.stats.commit_conflicts += len(lost)
                pending = [i for i in pending if events[i].user in lost]
            for i in pending:
                results[i] = Conflict(f"user {events[i].user!r}: {why}; retry it")
            self.stats.events_failed += len(pending)
        return results  # type: ignore[return-value]

    def _apply_once(self, events, idxs: list[int], k: int, results: list) -> set[str]:
        """Load the users of `events[idxs]`, step them wave by wave, commit; returns the users
        whose compare-and-set failed (their results are to be recomputed)."""
        slots = self._load(list(dict.fromkeys(events[i].user for i in idxs)))
        for wave in self._waves(events, idxs, results):
            self._run_wave(events, wave, slots, k, results)
        writes = {u: (sl.expected, sl.st) for u, sl in slots.items() if sl.changed}
        lost = self.store.commit(writes)
        for u, sl in slots.items():
            if u not in lost:
                self.stats.events_applied += sl.applied
        self._count_moves(slots, lost)
        return lost

    def _waves(self, events, idxs: list[int], results: list) -> list[list[tuple[int, int | None]]]:
        """Events as waves in which every user appears at most once, in arrival order; an
        unknown item is refused here (policy "error") or keeps its place (policy "skip", item
        None) so that it is answered with the state at its own position."""
        waves: list[list[tuple[int, int | None]]] = []
        nxt: dict[str, int] = {}
        for i in idxs:
            e = events[i]
            idx = self._index.get(e.item)
            if idx is None and self.unknown_items == "error":
                results[i] = UnknownItem(f"unknown item {e.item!r}: not in the cell's vocabulary")
                continue
            w = nxt.get(e.user, 0)
            nxt[e.user] = w + 1
            if w == len(waves):
                waves.append([])
            waves[w].append((i, idx))
        return waves

    def _answer(self, user: str, sl: _Slot, k: int, seq, reason: str) -> Recs:
        r = self._recs(user, sl.st if sl.st.top_items is not None else None, k, seq)
        r.applied, r.reason, r.reset = False, reason, sl.reset
        return r

    def _run_wave(self, events, wave, slots: dict[str, _Slot], k: int, results: list) -> None:
        """One ORT call for the wave's users that have something to apply."""
        rows: list[tuple[int, int, _Slot]] = []
        for i, idx in wave:
            e = events[i]
            sl = slots[e.user]
            if sl.error is not None:
                results[i] = sl.error
                self.stats.events_failed += 1
            elif e.seq is not None and sl.st.seq is not None and e.seq <= sl.st.seq:
                self.stats.events_duplicate += 1
                results[i] = self._answer(e.user, sl, k, e.seq, "duplicate")
            elif idx is None:
                self.stats.events_skipped += 1
                results[i] = self._answer(e.user, sl, k, e.seq, "unknown_item")
            else:
                rows.append((i, idx, sl))
        if not rows:
            return
        item = np.array([idx for _, idx, _ in rows], dtype=np.int64)
        state = _stack_rows([sl.st.state for _, _, sl in rows])
        keep = self.keep_history
        # each user's recent items after this event, trimmed to `keep` with one copy
        recents = []
        for i, _, sl in rows:
            r = sl.st.recent[1 - keep :] if keep > 1 else []
            r.append(events[i].item)
            recents.append(r)
        ns, ti, ts = self._run(item, state, self._exclude_rows(recents))
        # NaN/inf would be stored (poisoning the user for good) and answered as null. A row's
        # float64 sum is finite exactly when all of its float32 values are.
        sums = ns.sum(axis=1, dtype=np.float64) + ts.sum(axis=1, dtype=np.float64)
        broken = ~np.isfinite(sums)
        new_states = _own_rows(ns)
        rec_items = self._vocab[ti[:, :k]].tolist()
        rec_scores = ts[:, :k].tolist()
        cell, short = self._state_key, self.info.short_hash
        for r, (i, _idx, sl) in enumerate(rows):
            e = events[i]
            if broken[r]:
                sl.error = NonFiniteOutput(
                    f"the cell gave NaN or infinite scores or state for user {e.user!r}; the "
                    "event was not applied. Reset the user (PUT its history or DELETE it); if "
                    "every user fails, re-export the cell from a sound checkpoint"
                )
                results[i] = sl.error
                self.stats.events_failed += 1
                continue
            st = sl.st
            sl.st = UserState(
                cell=cell,
                state=new_states[r],
                seq=e.seq if e.seq is not None else st.seq,
                n=st.n + 1,
                rev=st.rev,
                recent=recents[r] if keep else [],
                top_items=ti[r].copy(),
                top_scores=ts[r].copy(),
            )
            sl.changed = True
            sl.applied += 1
            results[i] = Recs(
                e.user, rec_items[r], rec_scores[r], e.seq, reset=sl.reset, cell=short
            )

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
            sl = self._load([user])[user]
            if sl.migrated and not self.store.commit({user: (sl.expected, sl.st)}):
                self._count_moves({user: sl}, set())
        if sl.error is not None:
            raise sl.error
        if sl.expected is None:
            raise UnknownUser(f"no state for user {user!r}: send an event or PUT a history")
        if sl.reset is not None:
            raise UnknownUser(
                f"the stored state of user {user!r} was made by another cell; the user's next "
                "event starts from an empty history (or PUT the history)"
            )
        return self._recs(user, sl.st, k, sl.st.seq)

    def get_state(self, user: str) -> UserState | None:
        """The user's record if this cell can use it."""
        with self._lock:
            sl = self._load([user])[user]
        return None if sl.expected is None or sl.reset or sl.error else sl.st

    def history(self, user: str) -> UserState:
        """The user's stored record, whichever cell made it (for GET .../history)."""
        user = check_user(user)
        self.migrate([user])
        got = self.store.get_many([user]).get(user)
        if got is None:
            raise UnknownUser(f"no state for user {user!r}: send an event or PUT a history")
        return got

    def reset(self, user: str, history: Sequence, seq: int | None = None, k=None) -> Recs:
        """Replace the user's state with the one `history` (external ids, oldest first) makes."""
        steps = self.reset_steps(user, history, seq, k)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def reset_steps(self, user: str, history: Sequence, seq: int | None = None, k=None):
        """`reset` as a generator that yields after every `REPLAY_SLICE` positions, so a long
        history shares the engine with other users' events (the batcher runs one slice per
        turn); its value (StopIteration.value) is the answer. A PUT follows the events' seq
        rule: a seq not newer than the stored one is answered as a duplicate, not applied."""
        k = self.check_k(k)
        user = check_user(user)
        items = [check_item(x) for x in history]
        while True:  # once more from the start if the cell is swapped during the replay
            key = self._state_key
            idx = self.encode(items)
            kept = [x for x in items if x in self._index]
            state = np.zeros((1, self.state_size), np.float32)
            ex = np.full((1, 1), -1, np.int64)
            for start in range(0, max(len(idx) - 1, 0), self.REPLAY_SLICE):
                with self._lock:
                    if self._state_key != key:
                        break
                    for t in range(start, min(start + self.REPLAY_SLICE, len(idx) - 1)):
                        state, _, _ = self._run(np.array([idx[t]], np.int64), state, ex)
                yield
            with self._lock:
                if self._state_key != key:
                    continue
                return self._finish_reset(user, idx, kept, state, seq, k)

    def _finish_reset(self, user: str, idx: list[int], kept: list[str], state, seq, k) -> Recs:
        """The last step of a replayed history and its commit (under the engine's lock)."""
        ti = ts = None
        recent = kept[-self.keep_history :] if self.keep_history else []
        if idx:
            state, ti, ts = self._run(
                np.array([idx[-1]], np.int64), state, self._exclude_rows([recent])
            )
            if not (np.isfinite(state).all() and np.isfinite(ts).all()):
                raise NonFiniteOutput(
                    f"the cell gave NaN or infinite scores or state for the history of user "
                    f"{user!r}; nothing was stored. Re-export the cell from a sound checkpoint"
                )
        for _ in range(self.COMMIT_ATTEMPTS):
            sl = self._load([user])[user]
            if isinstance(sl.error, NewerCell):  # never overwrite a newer cell's record
                raise sl.error
            stored_seq = sl.st.seq
            if seq is not None and stored_seq is not None and seq <= stored_seq:
                self.stats.events_duplicate += 1
                return self._answer(user, sl, k, seq, "duplicate")
            new = UserState(
                cell=self._state_key,
                state=state[0].copy(),
                seq=seq if seq is not None else stored_seq,
                n=len(idx),
                recent=recent,
                top_items=None if ti is None else ti[0].copy(),
                top_scores=None if ts is None else ts[0].copy(),
            )
            if not self.store.commit({user: (sl.expected, new)}):
                return self._recs(user, new, k, new.seq)
            self.stats.commit_conflicts += 1
        raise Conflict(f"user {user!r}: another writer kept changing the record; retry the PUT")

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
