"""Batch scoring inside data engines (Spark, Dask, Ray): pandas frames in, top-K frames out.

An engine calls the scoring function many times in long-lived worker processes: Spark's
`mapInPandas` once per partition (an iterator of Arrow batches), Dask's `map_partitions` once
per partition, Ray's `map_batches` once per batch. Opening the cell (reading the ONNX file,
building the ORT session and the item index) costs more than scoring a small batch, so each
worker process opens a cell once, on the first batch it sees, and keeps it for its lifetime.
`opens()` tells how many times this process opened each cell (1 when the cache works).

The cell file must be readable where the workers run: a path on storage every worker mounts,
or, on Spark, a file shipped with `SparkContext.addFile` and named here by `SparkFile(name)`,
which each worker resolves to its local copy with `SparkFiles.get`.

Rows: `user_col` (any id, turned into a string) and `items_col` (the user's item ids, oldest
first; a list, an array, or null for none). The answer per user is the one `recblr score`
writes for the same history: `user`, `items` (top-K external ids) and `scores`.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recblr.runtime.engine import Engine
from recblr.runtime.score import ScoreInputError, score_histories
from recblr.runtime.store import MemoryStore

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class SparkFile:
    """A cell shipped to Spark workers with `SparkContext.addFile(path)`, named by its base name.

    Resolved on the worker (not on the driver), where `SparkFiles.get` knows the local copy.
    """

    name: str

    def local_path(self) -> str:
        from pyspark import SparkFiles

        return SparkFiles.get(self.name)


_lock = threading.Lock()
_engines: dict[tuple, tuple[tuple, Engine]] = {}
_opens: Counter[str] = Counter()


def cell_path(cell: str | os.PathLike | SparkFile) -> str:
    """The local file of a cell: a path as given, or a SparkFile's copy on this worker."""
    return cell.local_path() if isinstance(cell, SparkFile) else os.fspath(cell)


def _file_version(path: str) -> tuple:
    """What changes when a file is replaced: a worker outlives a job (Spark reuses its Python
    workers), and a cell overwritten at the same path between jobs must be opened anew."""
    try:
        st = os.stat(path)
    except OSError:
        return ()  # missing: the Engine names the file in its error
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def worker_engine(
    cell: str | os.PathLike | SparkFile,
    exclude_seen: int = 0,
    unknown_items: str = "error",
    providers: str = "cpu",
    threads: int = 1,
) -> Engine:
    """This process's engine for `cell`: opened on the first call, the same object afterwards
    (until the file at that path is replaced).

    threads=1: an engine runs one task per core it was given (Spark's local[N] and executor
    cores, Dask's threads per worker), so each ORT session keeps to one core.
    """
    path = cell_path(cell)
    key = (path, exclude_seen, unknown_items, providers, threads)
    version = _file_version(path)
    with _lock:  # Dask runs tasks of one worker in threads: open once, not once per thread
        cached = _engines.get(key)
        if cached is None or cached[0] != version:
            engine = Engine(
                path,
                providers=providers,
                store=MemoryStore(1),
                exclude_seen=exclude_seen,
                unknown_items=unknown_items,
                threads=threads or None,
            )
            cached = _engines[key] = (version, engine)
            _opens[path] += 1
    return cached[1]


def opens() -> dict[str, int]:
    """How many times this process opened each cell file (read it back from the workers)."""
    with _lock:
        return dict(_opens)


def score_frame(
    df: pd.DataFrame,
    cell: str | os.PathLike | SparkFile,
    k: int | None = None,
    user_col: str = "user",
    items_col: str = "items",
    exclude_seen: int = 0,
    unknown_items: str = "error",
    providers: str = "cpu",
    threads: int = 1,
    chunk_size: int = 1024,
) -> pd.DataFrame:
    """One frame of histories -> one frame [user_col, items, scores], rows in input order.

    The function for Dask `ddf.map_partitions(score_frame, cell, meta=score_meta())` and Ray
    `ds.map_batches(score_frame, fn_kwargs={"cell": path}, batch_format="pandas")`.
    """
    engine = worker_engine(cell, exclude_seen, unknown_items, providers, threads)
    histories = (
        (u, _item_list(u, items, items_col))
        for u, items in zip(df[user_col].tolist(), df[items_col].tolist(), strict=True)
    )
    out = list(score_histories(engine, histories, k, chunk_size, policy=unknown_items))
    return _frame(
        user_col,
        [u for u, _, _ in out],
        [i for _, i, _ in out],
        [s for _, _, s in out],
        df.index,
    )


def _frame(user_col: str, users: list, items: list, scores: list, index=None) -> pd.DataFrame:
    """Arrow-typed columns (string, list<string>, list<double>): Dask keeps them as they are
    and writes them to Parquet; Spark and Ray take them without a conversion."""
    import pandas as pd
    import pyarrow as pa

    columns = {
        user_col: pa.array(users, pa.string()),
        "items": pa.array(items, pa.list_(pa.string())),
        "scores": pa.array(scores, pa.list_(pa.float64())),
    }
    return pd.DataFrame(
        {name: pd.Series(col, dtype=pd.ArrowDtype(col.type)) for name, col in columns.items()}
    ).set_axis(index if index is not None else pd.RangeIndex(len(users)))


def _item_list(user, items, items_col: str) -> list[str]:
    if items is None:
        return []
    if isinstance(items, (str, bytes)):
        raise ScoreInputError(
            f"user {user!r}: column {items_col!r} holds a string, not a list of item ids (Dask "
            "casts a column of Python lists to strings: give it a list dtype, e.g. "
            "pd.ArrowDtype(pa.list_(pa.string())), or set dask.config "
            "'dataframe.convert-string' to False)"
        )
    return [str(x) for x in items]


def score_frames(
    batches: Iterable[pd.DataFrame], cell: str | os.PathLike | SparkFile, **options
) -> Iterator[pd.DataFrame]:
    """Iterator of frames -> iterator of scored frames: the function Spark `mapInPandas` takes.

        df.mapInPandas(functools.partial(score_frames, cell=SparkFile("cell.onnx")),
                       schema=spark_schema())

    `options` are `score_frame`'s (k, user_col, items_col, exclude_seen, unknown_items, ...).
    """
    for df in batches:
        yield score_frame(df, cell, **options)


def spark_schema(user_col: str = "user") -> str:
    """The Spark DDL schema of `score_frames`' output when the user column is `user_col`."""
    return f"`{user_col}` string, items array<string>, scores array<double>"


def score_meta(user_col: str = "user") -> pd.DataFrame:
    """An empty frame of `score_frame`'s output: Dask's `meta=` for map_partitions."""
    return _frame(user_col, [], [], [])
