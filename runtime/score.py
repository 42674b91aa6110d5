"""Batch scoring: whole histories -> top-K per user, streamed in chunks.

The same code serves three callers:
- `recblr score` (files: jsonl histories or an interactions CSV/TSV grouped per user),
- `score_histories` (any iterable of (user, items)),
- `recblr.runtime.frames` (pandas frames inside Spark `mapInPandas`, Dask `map_partitions`,
  Ray `map_batches`, with one engine per worker process).

Histories of a chunk are stepped through the cell together: one ORT call of the full cell
per position, holding every user of the chunk whose history is still that long.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from recblr.runtime import jsonio
from recblr.runtime.engine import Engine
from recblr.runtime.errors import RuntimeUserError, UnknownItem

USER_COLS = ("user", "user_id", "userId", "uid", "userid")
ITEM_COLS = ("item", "item_id", "itemId", "movieId", "iid", "itemid")
TIME_COLS = ("timestamp", "time", "ts", "t")
DEFAULT_COLUMNS = "user,item,rating,timestamp"  # ML-100K u.data, headerless


class ScoreInputError(RuntimeUserError):
    code = "bad_input"


def _encode(engine: Engine, user: str, items, policy: str) -> list[int]:
    try:
        return engine.encode(items, policy)
    except UnknownItem as e:
        raise UnknownItem(f"user {user!r}: {e} (use --unknown-items skip to drop it)") from None


def score_histories(
    engine: Engine,
    histories: Iterable[tuple[str, list]],
    k: int | None = None,
    chunk_size: int = 1024,
    policy: str | None = None,
) -> Iterator[tuple[str, list[str], list[float]]]:
    """(user, items oldest first) -> (user, top-k external ids, scores), in input order."""
    k = engine.check_k(k)
    policy = policy or engine.unknown_items
    chunk: list[tuple[str, list[int]]] = []

    def flush():
        _, ti, ts = engine.encode_histories([h for _, h in chunk])
        for r, (u, _) in enumerate(chunk):
            row = ti[r, :k]
            n = int((row > 0).sum())
            yield u, engine.decode(row[:n]), [float(x) for x in ts[r, :n]]

    for user, items in histories:
        chunk.append((str(user), _encode(engine, str(user), items, policy)))
        if len(chunk) >= chunk_size:
            yield from flush()
            chunk = []
    if chunk:
        yield from flush()


# ----------------------------------------------------------------------------- readers
def read_jsonl(f: io.TextIOBase) -> Iterator[tuple[str, list]]:
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            obj = jsonio.loads(line)
        except ValueError as e:
            raise ScoreInputError(f"line {lineno}: malformed JSON ({e})") from None
        if not isinstance(obj, dict) or "user" not in obj or "items" not in obj:
            raise ScoreInputError(f'line {lineno}: expected {{"user": ..., "items": [...]}}')
        if not isinstance(obj["items"], list):
            raise ScoreInputError(f"line {lineno}: 'items' must be a list")
        yield str(obj["user"]), obj["items"]


def _pick(header: list[str], names: tuple[str, ...], wanted: str | None) -> int | None:
    if wanted is not None:
        return header.index(wanted) if wanted in header else None
    for n in names:
        if n in header:
            return header.index(n)
    return None


def read_interactions(
    f: io.TextIOBase,
    sep: str = "\t",
    columns: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
) -> Iterator[tuple[str, list]]:
    """Rows (user, item[, timestamp]) grouped per user -> (user, items in timestamp order).

    Rows of a user must be contiguous (any order inside a group: sorted by timestamp here); a
    user who comes back after another user's rows is an error, since streaming cannot regroup.
    A header row is recognised by its column names; otherwise `columns` names the fields.
    """
    reader = csv.reader(f, delimiter=sep)
    first = next(reader, None)
    if first is None:
        return
    first = [c.strip() for c in first]
    names = [c.split(":")[0] for c in first]  # RecBole atomic files: "user_id:token"
    has_header = any(c in USER_COLS + ITEM_COLS or c in (user_col, item_col) for c in names)
    header = (
        [c.split(":")[0] for c in first]
        if has_header
        else [c.strip() for c in (columns or DEFAULT_COLUMNS).split(",")]
    )
    ui, ii, ti = (
        _pick(header, USER_COLS, user_col),
        _pick(header, ITEM_COLS, item_col),
        _pick(header, TIME_COLS, time_col),
    )
    if ui is None or ii is None:
        raise ScoreInputError(
            f"cannot find user and item columns in {header} (fields split on {sep!r}); name the "
            "fields of a headerless file with --columns (e.g. --columns user,item,rating,timestamp)"
            " and set the field separator with --sep"
        )
    seen: set[str] = set()
    cur: str | None = None
    rows: list[tuple[float, int, str]] = []

    def done():
        rows.sort()
        return cur, [r[2] for r in rows]

    lineno = 1 if has_header else 0
    it = reader if has_header else _chain_first(first, reader)
    for row in it:
        lineno += 1
        if not row or all(not c.strip() for c in row):
            continue
        try:
            u, item = row[ui].strip(), row[ii].strip()
            t = float(row[ti]) if ti is not None else 0.0
            if not math.isfinite(t):  # nan sorts nowhere: the history's order is undefined
                raise ValueError
        except (IndexError, ValueError):
            raise ScoreInputError(
                f"line {lineno}: cannot read user/item/timestamp from {row} (a timestamp must "
                "be a finite number)"
            ) from None
        if u != cur:
            if cur is not None:
                yield done()
                rows = []
            if u in seen:
                raise ScoreInputError(
                    f"line {lineno}: user {u!r} appears again after other users; the input must "
                    "be grouped per user (e.g. sort -t$'\\t' -k1,1 -k4,4n u.data)"
                )
            seen.add(u)
            cur = u
        rows.append((t, len(rows), item))
    if cur is not None:
        yield done()


def _chain_first(first, reader):
    yield first
    yield from reader


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    return "tsv"  # .tsv, .data (ML-100K u.data), .txt


def open_histories(
    path: str | os.PathLike,
    fmt: str = "auto",
    columns: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    sep: str | None = None,
    on_bytes=None,
) -> Iterator[tuple[str, list]]:
    p = Path(path)
    if not p.is_file():
        raise ScoreInputError(f"{p}: no such input file")
    fmt = detect_format(p) if fmt == "auto" else fmt
    if fmt not in ("jsonl", "csv", "tsv"):
        raise ScoreInputError(f"unknown input format {fmt!r}: use jsonl, csv or tsv")
    try:
        raw = open(p, "rb")
    except OSError as e:
        raise ScoreInputError(f"{p}: cannot read input ({e.strerror})") from None

    class Tap(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            n = raw.readinto(b)
            if on_bytes is not None and n:
                on_bytes(n)
            return n

    f = io.TextIOWrapper(io.BufferedReader(Tap(), 1 << 16), encoding="utf-8", newline="")
    try:
        if fmt == "jsonl":
            yield from read_jsonl(f)
        else:
            s = sep if sep is not None else ("," if fmt == "csv" else "\t")
            yield from read_interactions(f, s, columns, user_col, item_col, time_col)
    except UnicodeDecodeError as e:
        raise ScoreInputError(
            f"{p}: not UTF-8 text (cannot decode byte 0x{e.object[e.start]:02x}); convert it "
            "to UTF-8, e.g. with iconv -f latin1 -t utf-8"
        ) from None
    except csv.Error as e:
        raise ScoreInputError(f"{p}: cannot parse as {fmt} ({e})") from None
    except OSError as e:
        raise ScoreInputError(f"{p}: cannot read input ({e.strerror or e})") from None
    finally:
        f.close()
        raw.close()


class Writer:
    """jsonl: {"user","items","scores"} per user; csv: user,rank,item,score rows.

    Writes to a temporary file next to `path`; `close()` renames it onto `path`, `abort()`
    removes it, so a failed run leaves a previous output untouched.
    """

    def __init__(self, path: str | os.PathLike, fmt: str = "auto"):
        p = Path(path)
        self.fmt = (
            ("csv" if p.name.lower().endswith((".csv", ".tsv")) else "jsonl")
            if fmt == "auto"
            else fmt
        )
        if self.fmt not in ("jsonl", "csv"):
            raise ScoreInputError(f"unknown output format {fmt!r}: use jsonl or csv")
        self.path = p
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
        except OSError as e:
            raise ScoreInputError(f"{p}: cannot write output ({e.strerror})") from None
        self.tmp = Path(tmp)
        try:
            os.chmod(fd, _output_mode(p))
        except OSError:  # pragma: no cover - e.g. a filesystem without modes
            pass
        self.f = open(fd, "w", encoding="utf-8", newline="")
        if self.fmt == "csv":
            self.w = csv.writer(self.f)
            self.w.writerow(["user", "rank", "item", "score"])

    def write(self, user: str, items: list[str], scores: list[float]) -> None:
        if self.fmt == "jsonl":
            self.f.write(jsonio.dumps_line({"user": user, "items": items, "scores": scores}))
        else:
            for r, (i, s) in enumerate(zip(items, scores, strict=False), 1):
                self.w.writerow([user, r, i, f"{s:.6g}"])

    def close(self) -> None:
        """Finish: the output replaces `path` (atomically)."""
        self.f.close()
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise ScoreInputError(f"{self.path}: cannot write output ({e.strerror})") from None

    def abort(self) -> None:
        """Give up: remove the temporary file; `path` is left as it was."""
        self.f.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def _output_mode(p: Path) -> int:
    """The mode a plain open(p, "w") would give: the existing file's, else 0o666 less umask."""
    try:
        return p.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def score_file(
    engine: Engine,
    input_path,
    output_path,
    k: int | None = None,
    chunk_size: int = 1024,
    in_fmt: str = "auto",
    out_fmt: str = "auto",
    progress: bool = True,
    policy: str | None = None,
    **reader_kw,
) -> int:
    """Score a file of histories into an output file; returns the number of users written."""
    total = Path(input_path).stat().st_size if Path(input_path).is_file() else 0
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    prog = Progress(
        TextColumn("scoring"),
        BarColumn(),
        TextColumn("{task.fields[users]} users"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
    )
    n = 0
    with prog:
        task = prog.add_task("score", total=total or None, users=0)
        hist = open_histories(
            input_path, in_fmt, on_bytes=lambda b: prog.advance(task, b), **reader_kw
        )
        w = Writer(output_path, out_fmt)
        try:
            for user, items, scores in score_histories(engine, hist, k, chunk_size, policy):
                w.write(user, items, scores)
                n += 1
                if n % 256 == 0:
                    prog.update(task, users=n)
            prog.update(task, users=n)
        except BaseException:
            w.abort()
            raise
        w.close()
    return n


def topk_arrays(engine: Engine, histories: list[list[int]], k: int):
    """Internal top-k ids and scores for internal-id histories (benchmarks, tests)."""
    _, ti, ts = engine.encode_histories(histories)
    return np.asarray(ti[:, :k]), np.asarray(ts[:, :k])
