"""Approximate top-K for retrieval cells: an HNSW index over the item embeddings (hnswlib).

A retrieval cell (exported with `recblr-export --retrieval ann`) outputs the user vector and
the next state instead of scoring the catalog; the top-K then comes from an inner-product
HNSW index written beside the cell (`<cell>.hnsw` plus its description `<cell>.hnsw.json`).
The description carries the cell's `recblr.weights_sha256`: an index built from other
weights is refused with one line, never silently queried.

hnswlib was chosen by measurement against faiss (HNSW and IVF-Flat) and usearch
(docs/catalog.md, benchmarks/catalog.py --stage libraries). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recblr.runtime.errors import CellError

OUTPUT_USER_VECTOR = "user_vector"
META_RETRIEVAL = "recblr.retrieval"  # "ann" for retrieval cells; absent = the cell scores itself
RETRIEVAL_ANN = "ann"
INDEX_FORMAT = "recblr-ann-hnsw"
INDEX_FORMAT_VERSION = 1


def index_paths(cell_path: str | os.PathLike) -> tuple[Path, Path]:
    """(index file, description file) beside the cell."""
    p = Path(cell_path)
    return p.with_name(p.name + ".hnsw"), p.with_name(p.name + ".hnsw.json")


def is_retrieval_cell(meta: Mapping[str, str]) -> bool:
    return meta.get(META_RETRIEVAL) == RETRIEVAL_ANN


@dataclass(frozen=True)
class IndexInfo:
    """The index's description: what it was built from and how it is searched."""

    weights_sha256: str
    n_items: int
    dim: int
    m: int
    ef_construction: int
    ef_search: int

    def to_json(self) -> dict:
        return {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "library": "hnswlib",
                "space": "ip", **self.__dict__}


def read_index_info(path: Path) -> IndexInfo:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CellError(
            f"{path}: the retrieval cell's index description is missing; re-export with "
            "recblr-export --retrieval ann"
        ) from None
    except (OSError, ValueError) as e:
        raise CellError(f"{path}: unreadable index description ({e}); re-export the cell") from None
    if not isinstance(d, dict) or d.get("format") != INDEX_FORMAT or d.get("format_version") != INDEX_FORMAT_VERSION:
        raise CellError(f"{path}: not a {INDEX_FORMAT} v{INDEX_FORMAT_VERSION} index description; re-export the cell")
    try:
        return IndexInfo(str(d["weights_sha256"]), int(d["n_items"]), int(d["dim"]), int(d["m"]),
                         int(d["ef_construction"]), int(d["ef_search"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CellError(f"{path}: index description lacks {e}; re-export the cell") from None


class AnnTopK:
    """Top-K by inner product over items 1..n_items, skipping each row's excluded ids.

    Rows ask for K plus the row's number of exclusions, so after removing excluded ids K
    remain whenever the catalog has them; missing places are -1 with score -inf.
    """

    def __init__(self, index, info: IndexInfo, threads: int | None = None):
        self.index = index
        self.info = info
        self.threads = threads or -1  # hnswlib: -1 = all cores

    @classmethod
    def open(
        cls, cell_path: str | os.PathLike, weights_sha256: str, n_items: int, dim: int,
        threads: int | None = None,
    ) -> AnnTopK:
        """Load the index beside `cell_path`; CellError when it is missing or not this cell's."""
        try:
            import hnswlib
        except ImportError:
            raise CellError(
                f"{cell_path}: a --retrieval ann cell needs hnswlib; pip install 'recblr[ann]'"
            ) from None

        index_path, info_path = index_paths(cell_path)
        info = read_index_info(info_path)
        if info.weights_sha256 != weights_sha256:
            raise CellError(
                f"{index_path}: the index was built from other weights ({info.weights_sha256[:12]}) "
                f"than the cell {Path(cell_path).name} ({weights_sha256[:12]}); re-export with "
                "recblr-export --retrieval ann"
            )
        if info.n_items != n_items or info.dim != dim:
            raise CellError(
                f"{index_path}: the index holds {info.n_items} items of dim {info.dim}, the cell "
                f"{n_items} of dim {dim}; re-export with recblr-export --retrieval ann"
            )
        if not index_path.is_file():
            raise CellError(f"{index_path}: the retrieval cell's index is missing; re-export the cell")
        index = hnswlib.Index(space="ip", dim=dim)
        try:
            index.load_index(str(index_path), max_elements=n_items)
        except (RuntimeError, OSError) as e:
            raise CellError(f"{index_path}: hnswlib cannot load the index ({e}); re-export the cell") from None
        if index.get_current_count() != n_items:
            raise CellError(f"{index_path}: the index holds {index.get_current_count()} items, not {n_items}")
        index.set_ef(info.ef_search)
        return cls(index, info, threads)

    def __call__(self, vectors: np.ndarray, exclude: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items int64 [B, k], scores float32 [B, k]) for user vectors [B, D]; -1 in exclude = none."""
        B = len(vectors)
        items = np.full((B, k), -1, dtype=np.int64)
        scores = np.full((B, k), -np.inf, dtype=np.float32)
        if B == 0:
            return items, scores
        n_ex = (exclude > 0).sum(axis=1) if exclude.size else np.zeros(B, dtype=np.int64)
        want = min(self.info.n_items, k + int(n_ex.max()))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.set_ef(max(self.info.ef_search, want))
        try:
            labels, dist = self.index.knn_query(vectors, k=want, num_threads=self.threads)
        except RuntimeError:  # the beam found fewer than `want` items (a sparse graph): widen it
            self.index.set_ef(max(self.info.ef_search, 8 * want, 512))
            labels, dist = self.index.knn_query(vectors, k=want, num_threads=self.threads)
        labels = labels.astype(np.int64)
        if not n_ex.any():
            items[:, : min(k, want)] = labels[:, :k]
            scores[:, : min(k, want)] = 1.0 - dist[:, :k]
            return items, scores
        for r in range(B):
            keep = ~np.isin(labels[r], exclude[r][exclude[r] > 0])
            got = labels[r][keep][:k]
            items[r, : len(got)] = got
            scores[r, : len(got)] = 1.0 - dist[r][keep][:k]
        return items, scores


def retrieval_for(session, info, threads: int | None = None) -> AnnTopK | None:
    """The top-K strategy of a retrieval cell's session (None for a cell that scores itself)."""
    if not is_retrieval_cell(session.get_modelmeta().custom_metadata_map):
        return None
    return AnnTopK.open(info.path, info.weights_sha256, info.n_items, int(info.config.get("dim", 0)), threads)
