"""The data path as it was before the pyarrow/CSR rewrite (recblr bf6c5c2), kept only as the
oracle of tests/test_data_parity.py and the baseline of benchmarks/data.py: Python csv
reading, np.unique over object arrays, a list of per-user arrays.

Protocol: stable chronological sort per user, iterative k-core, leave-one-out; item and user
order by first appearance in the filtered file.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recblr.errors import RecblrError

PAD = "[PAD]"
FORMATS = ("auto", "inter", "ml-1m", "ml-100k", "csv")


@dataclass
class Interactions:
    """Raw (user, item, timestamp) rows in file order."""

    users: list[str]
    items: list[str]
    timestamps: np.ndarray  # float64
    source: str

    def __len__(self) -> int:
        return len(self.users)


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.exists():
        raise RecblrError(f"{path}: no such file; check the path (or run `recblr data fetch`)")
    if path.is_dir():
        raise RecblrError(f"{path}: is a directory; pass the interactions file inside it")
    try:
        with path.open("r", encoding="utf-8", newline="") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise RecblrError(f"{path}: not a UTF-8 text file ({e.reason}); pass an interactions file") from None


def _timestamp(value: str, path: Path, lineno: int, column: str) -> float:
    try:
        ts = float(value)
    except ValueError:
        raise RecblrError(
            f"{path}:{lineno}: timestamp {value!r} in column {column!r} is not a number; "
            "timestamps must be numeric (e.g. Unix seconds)"
        ) from None
    if ts != ts:  # NaN
        raise RecblrError(f"{path}:{lineno}: timestamp is NaN in column {column!r}")
    return ts


def _rows_to_interactions(
    rows: Iterator[tuple[int, list[str]]], path: Path, cols: tuple[int, int, int], tname: str
) -> Interactions:
    ui, ii, ti = cols
    need = max(cols) + 1
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    for lineno, fields in rows:
        if len(fields) < need:
            raise RecblrError(
                f"{path}:{lineno}: expected at least {need} fields, found {len(fields)}; "
                "check the file format / separator"
            )
        users.append(fields[ui].strip())
        items.append(fields[ii].strip())
        times.append(_timestamp(fields[ti].strip(), path, lineno, tname))
    if not users:
        raise RecblrError(f"{path}: no interactions in the file; pass a non-empty file")
    return Interactions(users, items, np.asarray(times, dtype=np.float64), str(path))


def _find_column(names: list[str], wanted: list[str], path: Path, role: str, flag: str) -> int:
    lowered = [n.lower() for n in names]
    for w in wanted:
        if w.lower() in lowered:
            return lowered.index(w.lower())
    raise RecblrError(
        f"{path}: no {role} column (looked for {', '.join(map(repr, wanted))}; "
        f"found {', '.join(map(repr, names))}); name it with {flag}"
    )


def load_inter(
    path: Path, user_col: str | None = None, item_col: str | None = None, time_col: str | None = None
) -> Interactions:
    """RecBole atomic file: tab-separated, header fields like `user_id:token`."""
    lines = _open_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise RecblrError(f"{path}: empty file; pass a RecBole .inter file") from None
    names = [h.split(":", 1)[0].strip() for h in header.split("\t")]
    if not any(":" in h for h in header.split("\t")):
        raise RecblrError(
            f"{path}: header {header[:80]!r} has no RecBole typed fields (e.g. user_id:token); "
            "pass --format csv for a plain CSV/TSV"
        )
    ui = _find_column(names, [user_col] if user_col else ["user_id"], path, "user", "--user-col")
    ii = _find_column(names, [item_col] if item_col else ["item_id"], path, "item", "--item-col")
    ti = _find_column(names, [time_col] if time_col else ["timestamp"], path, "timestamp", "--time-col")
    rows = ((n, line.split("\t")) for n, line in lines)
    return _rows_to_interactions(rows, path, (ui, ii, ti), names[ti])


def load_ml1m(path: Path) -> Interactions:
    """MovieLens-1M `ratings.dat`: UserID::MovieID::Rating::Timestamp."""
    rows = ((n, line.split("::")) for n, line in _open_lines(path))
    return _rows_to_interactions(rows, path, (0, 1, 3), "Timestamp")


def load_ml100k(path: Path) -> Interactions:
    """MovieLens-100K `u.data`: user, item, rating, timestamp, tab-separated."""
    rows = ((n, line.split("\t")) for n, line in _open_lines(path))
    return _rows_to_interactions(rows, path, (0, 1, 3), "timestamp")


def load_csv(
    path: Path,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
) -> Interactions:
    """CSV/TSV with a header naming the user, item and timestamp columns."""
    lines = _open_lines(path)  # checks existence and encoding, and finds the header
    try:
        _, header = next(lines)
    except StopIteration:
        raise RecblrError(f"{path}: empty file; pass a CSV/TSV with a header row") from None
    lines.close()
    if sep is None:
        sep = "\t" if path.suffix.lower() == ".tsv" or "\t" in header else ","
    with path.open("r", encoding="utf-8", newline="") as f:
        # csv.reader on the file itself keeps quoted fields (newlines included) intact.
        reader = csv.reader(f, delimiter=sep)
        names = next(r for r in reader if r)
        ui = _find_column(names, [user_col] if user_col else ["user_id", "user", "userId"], path, "user", "--user-col")
        ii = _find_column(names, [item_col] if item_col else ["item_id", "item", "movieId", "itemId"], path, "item", "--item-col")
        ti = _find_column(names, [time_col] if time_col else ["timestamp", "time", "ts"], path, "timestamp", "--time-col")
        try:
            rows = [(reader.line_num, r) for r in reader if r]
        except csv.Error as e:
            raise RecblrError(f"{path}:{reader.line_num}: malformed CSV ({e}); fix the quoting") from None
    return _rows_to_interactions(iter(rows), path, (ui, ii, ti), names[ti])


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".inter"):
        return "inter"
    if name.endswith(".dat"):
        return "ml-1m"
    if name == "u.data":
        return "ml-100k"
    if name.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    raise RecblrError(
        f"{path}: cannot tell the format from the name; pass --format one of {', '.join(FORMATS[1:])}"
    )


def load_interactions(
    path: str | Path,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
) -> Interactions:
    """Read any supported interactions file."""
    path = Path(path)
    if fmt not in FORMATS:
        raise RecblrError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        if not path.exists():
            raise RecblrError(f"{path}: no such file; check the path (or run `recblr data fetch`)")
        fmt = detect_format(path)
    if fmt == "inter":
        return load_inter(path, user_col, item_col, time_col)
    if fmt == "ml-1m":
        return load_ml1m(path)
    if fmt == "ml-100k":
        return load_ml100k(path)
    return load_csv(path, user_col, item_col, time_col)


def kcore_mask(user_codes: np.ndarray, item_codes: np.ndarray, min_count: int) -> np.ndarray:
    """Rows kept by the iterative k-core filter (repeat until no user or item drops)."""
    keep = np.ones(len(user_codes), dtype=bool)
    if min_count <= 1:
        return keep
    while True:
        u_cnt = np.bincount(user_codes[keep], minlength=user_codes.max() + 1)
        i_cnt = np.bincount(item_codes[keep], minlength=item_codes.max() + 1)
        new_keep = keep & (u_cnt[user_codes] >= min_count) & (i_cnt[item_codes] >= min_count)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


@dataclass
class SequenceData:
    """Per-user chronological sequences of internal item indices (1..n_items)."""

    item_ids: list[str]  # item_ids[0] == PAD
    user_ids: list[str]
    sequences: list[np.ndarray]
    spec: dict  # how to load this data again (saved in checkpoints)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def split_histories(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) of the leave-one-out `valid` or `test` split."""
        if split == "valid":
            return [s[:-2] for s in self.sequences], np.array([s[-2] for s in self.sequences])
        if split == "test":
            return [s[:-1] for s in self.sequences], np.array([s[-1] for s in self.sequences])
        raise ValueError(f"unknown split {split!r}")

    def train_sequences(self) -> list[np.ndarray]:
        """The training part of each user: everything before the validation target."""
        return [s[:-2] for s in self.sequences]


def build_sequences(inter: Interactions, min_count: int = 5, spec: dict | None = None) -> SequenceData:
    """Apply the protocol: stable time sort per user, k-core, id mapping."""
    if min_count < 3:
        raise RecblrError(f"--min-count {min_count} is too small: leave-one-out needs at least 3 items per user")
    u_ids, u_codes = np.unique(np.asarray(inter.users, dtype=object), return_inverse=True)
    i_ids, i_codes = np.unique(np.asarray(inter.items, dtype=object), return_inverse=True)
    keep = kcore_mask(u_codes, i_codes, min_count)
    if not keep.any():
        raise RecblrError(
            f"{inter.source}: no interactions left after the {min_count}-core filter "
            f"({len(inter)} rows in, every user or item has fewer than {min_count}); "
            "lower --min-count or use more data"
        )
    rows = np.flatnonzero(keep)
    # Stable: np.lexsort is stable, so equal (user, timestamp) keep file order.
    order = rows[np.lexsort((inter.timestamps[rows], u_codes[rows]))]
    # Internal ids in order of first appearance in the filtered file.
    first_items = i_codes[rows]
    _, first_pos = np.unique(first_items, return_index=True)
    item_codes_in_order = first_items[np.sort(first_pos)]
    item_index = np.zeros(len(i_ids), dtype=np.int64)
    item_index[item_codes_in_order] = np.arange(1, len(item_codes_in_order) + 1)
    item_ids = [PAD] + [str(i_ids[c]) for c in item_codes_in_order]

    users_sorted = u_codes[order]
    items_sorted = item_index[i_codes[order]]
    bounds = np.flatnonzero(np.diff(users_sorted)) + 1
    starts = np.concatenate([[0], bounds])
    # Users in order of first appearance in the filtered file.
    first_users = u_codes[rows]
    _, up = np.unique(first_users, return_index=True)
    user_order = first_users[np.sort(up)]
    groups = {int(users_sorted[s]): (s, e) for s, e in zip(starts, np.append(bounds, len(order)), strict=True)}
    sequences = [items_sorted[groups[int(u)][0] : groups[int(u)][1]].copy() for u in user_order]
    user_ids = [str(u_ids[u]) for u in user_order]
    return SequenceData(item_ids, user_ids, sequences, spec or {})


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_data(data: str) -> Path:
    """A known dataset name (fetched and cached on first use) or a path."""
    from recblr.datasets import KNOWN, fetch

    if data in KNOWN:
        return fetch(data)
    path = Path(data)
    if path.is_dir():
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


def load_dataset(
    data: str,
    fmt: str = "auto",
    min_count: int = 5,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
) -> SequenceData:
    """Name or path -> SequenceData, with a spec that lets a checkpoint find it again."""
    path = resolve_data(data)
    inter = load_interactions(path, fmt, user_col, item_col, time_col)
    spec = {
        "source": data,
        "path": str(path.resolve()),
        "format": fmt,
        "min_count": min_count,
        "columns": [user_col, item_col, time_col],
        "sha256": file_sha256(path),
    }
    return build_sequences(inter, min_count, spec)
