"""Interaction files -> three typed columns, read by pyarrow (columnar, multi-threaded).

Only the user, item and timestamp columns are read. Ids are dictionary-encoded once into
integer codes plus a vocabulary, so nothing downstream holds a Python object per event.
Text formats keep today's semantics: ids are strings (stripped of surrounding spaces),
timestamps numbers; Parquet ids may be strings or integers and timestamps numbers or Arrow
timestamps. Problems come out as one `RecblrError` naming the file, the column and how many
rows are affected.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recblr.errors import RecblrError

FORMATS = ("auto", "inter", "ml-1m", "ml-100k", "csv", "parquet")
USER_NAMES = ["user_id", "user", "userId"]
ITEM_NAMES = ["item_id", "item", "movieId", "itemId"]
TIME_NAMES = ["timestamp", "time", "ts"]
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity)$"


@dataclass
class Interactions:
    """(user, item, timestamp) rows in file order, ids as codes into a vocabulary.

    `user_codes[r]` indexes `user_vocab` (Arrow strings); timestamps are int64 or float64 and
    only their order matters.
    """

    user_codes: np.ndarray
    user_vocab: pa.Array
    item_codes: np.ndarray
    item_vocab: pa.Array
    timestamps: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.user_codes)

    @classmethod
    def from_lists(cls, users: list[str], items: list[str], timestamps, source: str = "memory") -> Interactions:
        """Small in-memory logs (tests, examples)."""
        uc, uv = encode_ids(pa.chunked_array([pa.array(users, pa.string())]))
        ic, iv = encode_ids(pa.chunked_array([pa.array(items, pa.string())]))
        return cls(uc, uv, ic, iv, np.asarray(timestamps, dtype=np.float64), source)

    def users(self) -> list[str]:
        """External user id of every row (a Python list: for small logs and tests)."""
        return self.user_vocab.take(pa.array(self.user_codes)).to_pylist()

    def items(self) -> list[str]:
        """External item id of every row (a Python list: for small logs and tests)."""
        return self.item_vocab.take(pa.array(self.item_codes)).to_pylist()


class Steps:
    """Progress for reading and preparing: a bar for the read, a line per later step.

    Quiet unless `show` (by default: stderr is a terminal)."""

    def __init__(self, show: bool | None = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), console=console, transient=True,
            disable=not (console.is_terminal if show is None else show),
        )
        self._task = None

    def __enter__(self) -> Steps:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, description: str, total: float | None = None) -> None:
        """A new step (the previous one is done)."""
        if self._task is not None:
            self.progress.remove_task(self._task)
        self._task = self.progress.add_task(description, total=total)

    def advance(self, n: float) -> None:
        if self._task is not None:
            self.progress.advance(self._task, n)


class _CountingFile(io.RawIOBase):
    """A binary file that reports how many bytes were read (the CSV read's progress)."""

    def __init__(self, path: Path, advance: Callable[[float], None]):
        self._f = path.open("rb")
        self._advance = advance

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        self._advance(n or 0)
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


# --- columns -> codes -------------------------------------------------------------------


def encode_ids(col: pa.ChunkedArray, strip: bool = False) -> tuple[np.ndarray, pa.Array]:
    """Integer codes (int32) and the string vocabulary they index.

    Each chunk is hashed on its own (or keeps the dictionary it was read with), then the
    chunks' small dictionaries are hashed together and every chunk's codes remapped: one
    pass over the rows, no Python object per row. `strip` trims surrounding whitespace from
    the ids (text formats), merging ids that become equal."""
    parts = [c if pa.types.is_dictionary(c.type) else pc.dictionary_encode(c) for c in col.chunks if len(c)]
    if not parts:
        return np.zeros(0, dtype=np.int32), pa.array([], pa.string())
    words = pa.concat_arrays([p.dictionary for p in parts])
    if not (pa.types.is_string(words.type) or pa.types.is_large_string(words.type)):
        words = pc.cast(words, pa.string())
    if strip:
        words = pc.utf8_trim_whitespace(words)
    merged = pc.dictionary_encode(words)
    remap = merged.indices.to_numpy().astype(np.int32, copy=False)
    codes = np.empty(len(col), dtype=np.int32)
    row = base = 0
    for p in parts:
        codes[row : row + len(p)] = remap[base + p.indices.to_numpy(zero_copy_only=False)]
        row += len(p)
        base += len(p.dictionary)
    return codes, merged.dictionary


def _id_column(col: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    value_type = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_binary(value_type) or pa.types.is_large_binary(value_type):
        try:
            return pc.cast(col, pa.string())
        except pa.ArrowInvalid:
            raise RecblrError(f"{where}: column {name!r} holds bytes that are not UTF-8; ids must be text or integers") from None
    if not (pa.types.is_string(value_type) or pa.types.is_large_string(value_type) or pa.types.is_integer(value_type)):
        raise RecblrError(f"{where}: column {name!r} has type {value_type}; ids must be strings or integers")
    return col


def _no_nulls(col: pa.ChunkedArray, name: str, where: str) -> None:
    if col.null_count:
        raise RecblrError(
            f"{where}: column {name!r} is empty or null in {col.null_count} of {len(col)} rows; "
            "fill or drop those rows"
        )


def _timestamps(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """int64 or float64 values that order the events (Arrow timestamps as their integers)."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        col = _parse_times(col, name, where)
        t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_duration(t):
        col = pc.cast(col, pa.int64()) if pa.types.is_timestamp(t) or pa.types.is_duration(t) else pc.cast(
            pc.cast(col, pa.timestamp("s")), pa.int64())
    elif pa.types.is_integer(t):
        col = pc.cast(col, pa.int64())
    elif pa.types.is_floating(t):
        col = pc.cast(col, pa.float64())
        nan = pc.sum(pc.is_nan(col)).as_py() or 0
        if nan:
            raise RecblrError(f"{where}: timestamp column {name!r} is NaN in {nan} of {len(col)} rows; fill or drop those rows")
    else:
        raise RecblrError(f"{where}: timestamp column {name!r} has type {t}; timestamps must be numbers or times")
    return np.concatenate([c.to_numpy(zero_copy_only=False) for c in col.chunks]) if col.num_chunks else np.zeros(0)


def _parse_times(col: pa.ChunkedArray, name: str, where: str) -> pa.ChunkedArray:
    """Text timestamps: numbers, else ISO-8601 times, else an error counting the bad rows."""
    col = pc.utf8_trim_whitespace(col)
    for target in (pa.float64(), pa.timestamp("ns")):
        try:
            return pc.cast(col, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    bad = pc.invert(pc.match_substring_regex(col, _NUMBER, ignore_case=True))
    n_bad = pc.sum(bad).as_py() or 0
    first = pc.filter(col, bad)[0].as_py() if n_bad else None
    raise RecblrError(
        f"{where}: timestamp column {name!r} is not a number in {n_bad} of {len(col)} rows "
        f"(first: {first!r}); timestamps must be numeric (e.g. Unix seconds) or ISO-8601 times"
    )


def to_interactions(table: pa.Table, names: tuple[str, str, str], where: str, strip: bool) -> Interactions:
    """Check and encode the three columns of a table."""
    un, itn, tn = names
    if table.num_rows == 0:
        raise RecblrError(f"{where}: no interactions in the file; pass a non-empty file")
    for n in names:
        _no_nulls(table.column(n), n, where)
    uc, uv = encode_ids(_id_column(table.column(un), un, where), strip)
    ic, iv = encode_ids(_id_column(table.column(itn), itn, where), strip)
    ts = _timestamps(table.column(tn), tn, where)
    return Interactions(uc, uv, ic, iv, ts, where)


# --- files -> tables --------------------------------------------------------------------


def find_column(names: list[str], wanted: list[str], where: str, role: str, flag: str) -> str:
    """The column named `wanted[0]` (or a later alias), case-insensitively."""
    lowered = [n.lower() for n in names]
    for w in wanted:
        if w.lower() in lowered:
            return names[lowered.index(w.lower())]
    raise RecblrError(
        f"{where}: no {role} column (looked for {', '.join(map(repr, wanted))}; "
        f"found {', '.join(map(repr, names))}); name it with {flag}"
    )


def _columns(names: list[str], where: str, user_col, item_col, time_col) -> tuple[str, str, str]:
    return (
        find_column(names, [user_col] if user_col else USER_NAMES, where, "user", "--user-col"),
        find_column(names, [item_col] if item_col else ITEM_NAMES, where, "item", "--item-col"),
        find_column(names, [time_col] if time_col else TIME_NAMES, where, "timestamp", "--time-col"),
    )


def _first_line(path: Path) -> str:
    with path.open("rb") as f:
        raw = f.readline(1 << 20)
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise RecblrError(f"{path}: not a UTF-8 text file ({e.reason}); pass an interactions file") from None


def _read_text(
    path: Path,
    steps: Steps,
    names: tuple[str, str, str],
    read: pcsv.ReadOptions,
    delimiter: str,
    quoting: bool,
) -> pa.Table:
    """Stream a delimited file through pyarrow with the three columns typed up front."""
    un, itn, tn = names
    parse = pcsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoting else False,
                              newlines_in_values=quoting)

    def convert(time_type):
        return pcsv.ConvertOptions(
            include_columns=list(names), column_types={un: pa.string(), itn: pa.string(), tn: time_type},
            strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False,
        )

    def attempt(time_type) -> pa.Table:
        steps.start(f"reading {path.name}", total=path.stat().st_size)
        f = _CountingFile(path, steps.advance)
        try:
            return pcsv.read_csv(f, read_options=read, parse_options=parse, convert_options=convert(time_type))
        finally:
            f.close()

    try:
        try:
            return attempt(pa.float64())
        except pa.ArrowInvalid as e:
            if "column #" not in str(e) or "conversion error" not in str(e):
                raise
            return attempt(pa.string())  # not all numbers: `_parse_times` explains or parses
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        msg = " ".join(str(e).split())
        raise RecblrError(f"{path}: malformed file ({msg}); check the format and separator") from None
    except UnicodeDecodeError as e:
        raise RecblrError(f"{path}: not a UTF-8 text file ({e.reason}); pass an interactions file") from None


def read_inter(path: Path, steps: Steps, user_col=None, item_col=None, time_col=None) -> Interactions:
    """RecBole atomic file: tab-separated, header fields like `user_id:token`, no quoting."""
    header = _first_line(path)
    if not header.strip():
        raise RecblrError(f"{path}: empty file; pass a RecBole .inter file")
    fields = header.split("\t")
    if not any(":" in h for h in fields):
        raise RecblrError(
            f"{path}: header {header[:80]!r} has no RecBole typed fields (e.g. user_id:token); "
            "pass --format csv for a plain CSV/TSV"
        )
    names = [h.split(":", 1)[0].strip() for h in fields]
    cols = (
        find_column(names, [user_col] if user_col else ["user_id"], str(path), "user", "--user-col"),
        find_column(names, [item_col] if item_col else ["item_id"], str(path), "item", "--item-col"),
        find_column(names, [time_col] if time_col else ["timestamp"], str(path), "timestamp", "--time-col"),
    )
    read = pcsv.ReadOptions(column_names=names, skip_rows=1, block_size=64 << 20)
    return to_interactions(_read_text(path, steps, cols, read, "\t", quoting=False), cols, str(path), strip=True)


def read_movielens(path: Path, steps: Steps, fmt: str) -> Interactions:
    """MovieLens `ratings.dat` (UserID::MovieID::Rating::Timestamp) or `u.data` (tab-separated)."""
    if fmt == "ml-1m":  # '::' is read as ':' with an empty field between
        delimiter, cols = ":", ("f0", "f2", "f6")
    else:
        delimiter, cols = "\t", ("f0", "f1", "f3")
    read = pcsv.ReadOptions(autogenerate_column_names=True, block_size=64 << 20)
    return to_interactions(_read_text(path, steps, cols, read, delimiter, quoting=False), cols, str(path), strip=True)


def read_csv(path: Path, steps: Steps, user_col=None, item_col=None, time_col=None, sep=None) -> Interactions:
    """CSV/TSV with a header row naming the user, item and timestamp columns."""
    header = _first_line(path)
    if not header.strip():
        raise RecblrError(f"{path}: empty file; pass a CSV/TSV with a header row")
    if sep is None:
        sep = "\t" if path.suffix.lower() == ".tsv" or "\t" in header else ","
    names = next(csv.reader([header], delimiter=sep))
    cols = _columns(names, str(path), user_col, item_col, time_col)
    read = pcsv.ReadOptions(block_size=64 << 20)
    return to_interactions(_read_text(path, steps, cols, read, sep, quoting=True), cols, str(path), strip=True)


def parquet_files(path: Path) -> list[Path]:
    """The file itself, or a directory's `*.parquet` files in path order (that is the row order)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not any(s.startswith((".", "_")) for s in p.relative_to(path).parts))


def read_parquet(path: Path, steps: Steps, user_col=None, item_col=None, time_col=None) -> Interactions:
    """A Parquet file or a directory of them; string id columns are read dictionary-encoded."""
    files = parquet_files(path)
    if not files:
        raise RecblrError(f"{path}: no .parquet files in the directory; pass a Parquet file or directory")
    try:
        schema = pq.read_schema(files[0])
        cols = _columns(schema.names, str(path), user_col, item_col, time_col)
        as_dict = [c for c in cols[:2] if pa.types.is_string(schema.field(c).type)
                   or pa.types.is_large_string(schema.field(c).type) or pa.types.is_binary(schema.field(c).type)]
        metas = [pq.ParquetFile(f).metadata for f in files]
        steps.start(f"reading {path.name}", total=sum(m.num_rows for m in metas))
        tables = []
        for f in files:
            pf = pq.ParquetFile(f, read_dictionary=as_dict)
            for g in range(pf.num_row_groups):
                t = pf.read_row_group(g, columns=list(cols))
                tables.append(t)
                steps.advance(t.num_rows)
        table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in cols})
    except (pa.ArrowInvalid, OSError) as e:
        msg = " ".join(str(e).split())
        raise RecblrError(f"{path}: cannot read as Parquet ({msg}); check the file") from None
    except KeyError as e:
        raise RecblrError(f"{path}: a Parquet file lacks column {e}; every file needs the same columns") from None
    return to_interactions(table, cols, str(path), strip=False)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir() or name.endswith((".parquet", ".pq")):
        return "parquet"
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


def read_interactions(
    path: str | Path,
    fmt: str = "auto",
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    steps: Steps | None = None,
) -> Interactions:
    """Read any supported interactions file (or Parquet directory)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise RecblrError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise RecblrError(f"{path}: no such file; check the path (or run `recblr data fetch`)")
    if fmt == "auto":
        fmt = detect_format(path)
    if path.is_dir() and fmt != "parquet":
        raise RecblrError(f"{path}: is a directory; pass the interactions file inside it")
    with _maybe(steps) as s:
        if fmt == "parquet":
            inter = read_parquet(path, s, user_col, item_col, time_col)
        elif fmt == "inter":
            inter = read_inter(path, s, user_col, item_col, time_col)
        elif fmt in ("ml-1m", "ml-100k"):
            inter = read_movielens(path, s, fmt)
        else:
            inter = read_csv(path, s, user_col, item_col, time_col)
    pa.default_memory_pool().release_unused()  # the file's columns are gone: give their pages back
    return inter


@contextmanager
def _maybe(steps: Steps | None) -> Iterator[Steps]:
    if steps is not None:
        yield steps
        return
    with Steps() as s:
        yield s
