"""Interactions -> per-user chronological item sequences, by the paper's protocol.

Protocol (shared/spec/RECBLR.md, via RecBole): stable chronological sort per user (equal
timestamps keep file order), iterative k-core filter on users and items, leave-one-out
split (last item = test target, second to last = validation target, the rest trains).
Internal item indices follow the items' first appearance in the filtered file (index 0 is
padding); users likewise. Everything runs over integer codes (see `recblr.readers`), and
the sequences are stored as CSR: one flat item array plus per-user offsets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recblr.errors import RecblrError
from recblr.readers import FORMATS, Interactions, Steps, read_interactions

__all__ = ["FORMATS", "PAD", "Interactions", "SequenceData", "build_sequences", "kcore_rows",
           "load_dataset", "dataset_from_spec", "resolve_data", "first_appearance"]

PAD = "[PAD]"
_DROP = {"train": 2, "valid": 2, "test": 1}  # items cut from the end of each sequence


@dataclass
class SequenceData:
    """Per-user chronological sequences of internal item indices (1..n_items), as CSR.

    User u's sequence is `items[offsets[u]:offsets[u + 1]]`.
    """

    item_ids: list[str]  # item_ids[0] == PAD
    user_ids: list[str]
    items: np.ndarray  # int64, all users' sequences one after another
    offsets: np.ndarray  # int64, n_users + 1 entries
    spec: dict = field(default_factory=dict)  # how to load this data again (saved in checkpoints)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_interactions(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Sequence length of every user."""
        return np.diff(self.offsets)

    def bounds(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) into `items` of each user's `train`, `valid` or `test` history."""
        if split not in _DROP:
            raise ValueError(f"unknown split {split!r}")
        return self.offsets[:-1], self.offsets[1:] - _DROP[split]

    def targets(self, split: str) -> np.ndarray:
        """The leave-one-out target of each user for `valid` or `test`."""
        if split not in ("valid", "test"):
            raise ValueError(f"unknown split {split!r}")
        return self.items[self.bounds(split)[1]]

    def windows(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Right-padded (B, max(lengths)) int64 matrix of `items[starts[b] : starts[b] + lengths[b]]`
        (0 = padding): a batch's inputs in one gather, no per-row Python loop."""
        starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
        width = max(1, int(lengths.max())) if len(lengths) else 1
        cols = np.arange(width, dtype=np.int64)
        inside = cols < lengths[:, None]
        idx = np.where(inside, starts[:, None] + cols, 0)
        return np.where(inside, self.items[idx], 0)

    @cached_property
    def sequences(self) -> list[np.ndarray]:
        """Each user's whole sequence (views into `items`)."""
        return np.split(self.items, self.offsets[1:-1])

    def _views(self, split: str) -> list[np.ndarray]:
        return [s[: len(s) - _DROP[split]] for s in self.sequences]

    def split_histories(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) of the leave-one-out `valid` or `test` split."""
        return self._views(split), self.targets(split)

    def train_sequences(self) -> list[np.ndarray]:
        """The training part of each user: everything before the validation target."""
        return self._views("train")


def kcore_rows(user_codes: np.ndarray, item_codes: np.ndarray, min_count: int) -> np.ndarray:
    """Indices (ascending) of the rows kept by the iterative k-core filter: drop users and
    items with fewer than `min_count` rows, repeat until none drops. Shrinks as it goes."""
    rows = np.arange(len(user_codes), dtype=np.int64)
    if min_count <= 1 or len(rows) == 0:
        return rows
    u, i = user_codes, item_codes
    n_u, n_i = int(u.max()) + 1, int(i.max()) + 1
    while len(rows):
        ok = (np.bincount(u, minlength=n_u) >= min_count)[u]
        ok &= (np.bincount(i, minlength=n_i) >= min_count)[i]
        if ok.all():
            break
        rows, u, i = rows[ok], u[ok], i[ok]
    return rows


def first_appearance(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rank, order): rank[r] is row r's code renumbered 0.. by first appearance, and
    order[k] the code that appeared k-th (one hash pass, no sort)."""
    enc = pc.dictionary_encode(pa.array(codes))
    return enc.indices.to_numpy(), enc.dictionary.to_numpy()


def user_time_order(user: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Row order by (user, time, row): a stable sort of the rows by user, then time.

    Same order as `np.lexsort((time, user))`, faster: rows already in time order (most logs)
    skip the time sort, and the user sort runs on one int64 key (user << 32 | position),
    which is unique, so an unstable sort is exact."""
    n = len(user)
    if n >= 2**32 or (len(user) and int(user.max()) >= 2**31):
        return np.lexsort((time, user))
    by_time = None if bool(np.all(time[1:] >= time[:-1])) else np.argsort(time, kind="stable")
    key = np.arange(n, dtype=np.int64)
    for s in range(0, n, 1 << 24):  # in slices: no full-size temporaries
        u = user[s : s + (1 << 24)] if by_time is None else user[by_time[s : s + (1 << 24)]]
        key[s : s + (1 << 24)] |= u.astype(np.int64) << 32
    key.sort()
    key &= 0xFFFFFFFF
    return key if by_time is None else by_time[key]


def build_sequences(
    inter: Interactions, min_count: int = 5, spec: dict | None = None, steps: Steps | None = None
) -> SequenceData:
    """Apply the protocol: k-core, first-appearance ids, stable (user, time) sort."""
    if min_count < 3:
        raise RecblrError(f"--min-count {min_count} is too small: leave-one-out needs at least 3 items per user")
    steps = steps or Steps(show=False)
    steps.start(f"{min_count}-core filter")
    rows = kcore_rows(inter.user_codes, inter.item_codes, min_count)
    if len(rows) == 0:
        raise RecblrError(
            f"{inter.source}: no interactions left after the {min_count}-core filter "
            f"({len(inter)} rows in, every user or item has fewer than {min_count}); "
            "lower --min-count or use more data"
        )
    steps.start("numbering users and items")
    item_rank, item_order = first_appearance(inter.item_codes[rows])
    user_rank, user_order = first_appearance(inter.user_codes[rows])
    steps.start("sorting by user and time")
    order = user_time_order(user_rank, inter.timestamps[rows])
    del rows
    items = np.add(item_rank[order], 1, dtype=np.int64)
    del order, item_rank
    offsets = np.zeros(len(user_order) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_rank, minlength=len(user_order)), out=offsets[1:])
    steps.start("collecting ids")
    item_ids = [PAD] + inter.item_vocab.take(pa.array(item_order)).to_pylist()
    user_ids = inter.user_vocab.take(pa.array(user_order)).to_pylist()
    return SequenceData(item_ids, user_ids, items, offsets, spec or {})


def file_sha256(path: Path, steps: Steps | None = None) -> str:
    """Checksum of a file, or of a Parquet directory's files (names and contents)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if steps is not None:
        steps.start(f"checksum of {path.name}", total=sum(f.stat().st_size for f in files))
    for f in files:
        if f != path:
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
                if steps is not None:
                    steps.advance(len(block))
    return h.hexdigest()


def resolve_data(data: str) -> Path:
    """A known dataset name (fetched and cached on first use) or a path (a Parquet directory too)."""
    from recblr.datasets import KNOWN, fetch

    if data in KNOWN:
        return fetch(data)
    path = Path(data)
    if path.is_dir():
        if any(path.rglob("*.parquet")):
            return path
        found = sorted(path.glob("*.inter")) + [p for p in (path / "ratings.dat", path / "u.data") if p.exists()]
        if len(found) != 1:
            raise RecblrError(
                f"{path}: is a directory with {len(found)} interaction files; pass the file itself"
            )
        return found[0]
    if not path.exists():
        raise RecblrError(
            f"{data}: no such file and not a known dataset ({', '.join(KNOWN)}); check the path"
        )
    return path


def _build(path: Path, spec: dict, steps: Steps) -> SequenceData:
    user_col, item_col, time_col = spec.get("columns") or [None, None, None]
    inter = read_interactions(path, spec.get("format", "auto"), user_col, item_col, time_col, steps)
    return build_sequences(inter, int(spec.get("min_count", 5)), spec, steps)


def load_dataset(
    data: str,
    fmt: str = "auto",
    min_count: int = 5,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    show_progress: bool | None = None,
) -> SequenceData:
    """Name or path -> SequenceData, with a spec that lets a checkpoint find it again.

    Progress is shown on stderr when it is a terminal (`show_progress` overrides)."""
    if min_count < 3:
        raise RecblrError(f"--min-count {min_count} is too small: leave-one-out needs at least 3 items per user")
    path = resolve_data(data)
    with Steps(show_progress) as steps:
        spec = {
            "source": data,
            "path": str(path.resolve()),
            "format": fmt,
            "min_count": min_count,
            "columns": [user_col, item_col, time_col],
            "sha256": file_sha256(path, steps),
        }
        return _build(path, spec, steps)


def dataset_from_spec(spec: dict, show_progress: bool | None = None) -> SequenceData | None:
    """Reload a checkpoint's data if the same file is still at hand, else None."""
    if not spec or "path" not in spec:
        return None
    path = Path(spec["path"])
    if not path.exists():
        return None
    with Steps(show_progress) as steps:
        if file_sha256(path, steps) != spec.get("sha256"):
            return None
        return _build(path, spec, steps)
