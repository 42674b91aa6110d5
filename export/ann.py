"""`--retrieval ann`: a cell that outputs the user vector, plus an HNSW index of the items.

For catalogs where scoring every item on every event dominates the cost, the exported cell
stops at the user vector: (item [B], state [B,S]) -> (next_state [B,S], user_vector [B,D]).
The runtime (recblr.runtime.ann) then asks an inner-product HNSW index, built here from the
same item embedding table and written beside the cell, for the top-K. The index's
description carries the cell's weight hash, so the runtime refuses an index of other weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from recblr import __version__
from recblr.errors import RecblrError
from recblr.export.cell import RecBLRCell
from recblr.export.onnx_export import (
    _contract_metadata,
    _quiet,
    _target_dir,
    check_opset,
    save_cell_proto,
    set_metadata,
    weights_sha256,
)
from recblr.model import RecBLR
from recblr.runtime import contract as C
from recblr.runtime.ann import (
    META_RETRIEVAL,
    OUTPUT_USER_VECTOR,
    RETRIEVAL_ANN,
    AnnTopK,
    IndexInfo,
    index_paths,
)

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 100
DEFAULT_EF_SEARCH = 64  # chosen by measurement at 10^6 items (docs/catalog.md)
DEFAULT_MIN_RECALL = 0.95


class RetrievalCell(RecBLRCell):
    """(item [B], state [B,S]) -> (next_state [B,S], user_vector [B,D]): the step without scoring."""

    def forward(self, item: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, next_state = self.step(item, state)
        return next_state, h.float()


def retrieval_to_proto(model: RecBLR, item_ids: Sequence[str], top_k: int, opset: int) -> onnx.ModelProto:
    """The retrieval cell as ONNX, with the contract metadata and `recblr.retrieval = ann`."""
    check_opset(opset)
    cfg = model.cfg
    was_training = model.training
    cell = RetrievalCell(model, top_k).eval()
    example = (torch.tensor([1, min(2, cfg.n_items)], dtype=torch.long), torch.zeros(2, cfg.state_size))
    batch = torch.export.Dim("batch")
    try:
        with _quiet(), torch.no_grad():
            proto = torch.onnx.export(
                cell, example, None, dynamo=True, verbose=False, opset_version=opset,
                input_names=[C.INPUT_ITEM, C.INPUT_STATE],
                output_names=[C.OUTPUT_NEXT_STATE, OUTPUT_USER_VECTOR],
                dynamic_shapes={"item": {0: batch}, "state": {0: batch}},
            ).model_proto
    finally:
        model.train(was_training)
    proto.producer_name = "recblr"
    proto.producer_version = __version__
    proto.doc_string = "RecBLR retrieval cell: (item, state) -> (next_state, user_vector); top-K from the index beside it"
    meta = _contract_metadata(cfg.to_dict(), cfg.state_size, top_k, opset, list(item_ids), "fp32")
    meta[C.META_WEIGHTS_SHA256] = weights_sha256(model, "fp32")
    meta[META_RETRIEVAL] = RETRIEVAL_ANN
    set_metadata(proto, meta)
    return proto


@dataclass
class IndexBuild:
    info: IndexInfo
    seconds: float
    bytes_on_disk: int


def item_vectors(model: RecBLR) -> np.ndarray:
    """The scored rows 1..n_items of the embedding table (row 0 is padding), float32."""
    return model.item_emb.weight.detach()[1:].to("cpu", torch.float32).contiguous().numpy()


def build_index(vectors: np.ndarray, m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
                threads: int = -1):
    """An inner-product hnswlib index of `vectors`, labelled 1..n (the internal item ids)."""
    try:
        import hnswlib
    except ImportError:
        raise RecblrError("--retrieval ann needs hnswlib; pip install 'recblr[ann]'") from None

    n, dim = vectors.shape
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=m, ef_construction=ef_construction, random_seed=0)
    index.add_items(vectors, np.arange(1, n + 1), num_threads=threads)
    return index


def write_index(cell_path: str | os.PathLike, index, info: IndexInfo) -> int:
    """Write the index and its description beside `cell_path`, atomically; returns its bytes."""
    index_path, info_path = index_paths(cell_path)
    target = _target_dir(index_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{index_path.name}.tmp-", dir=target))
    try:
        index.save_index(str(tmp / index_path.name))
        (tmp / info_path.name).write_text(json.dumps(info.to_json(), indent=2))
        os.replace(tmp / index_path.name, index_path)
        os.replace(tmp / info_path.name, info_path)
    except OSError as e:
        raise RecblrError(f"cannot write the index {index_path}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index_path.stat().st_size


def user_vectors(model: RecBLR, histories: Sequence[np.ndarray]) -> np.ndarray:
    """The user vector after each history (what the retrieval cell outputs), float32 [B, D]."""
    from recblr.evaluate import pad_right

    was_training = model.training
    model.eval()
    with torch.no_grad():
        items, lengths = pad_right(list(histories))
        h = model.last_hidden(items, lengths).float().numpy()
    model.train(was_training)
    return h


def recall_at_10(ann: AnnTopK, vectors: np.ndarray, items: np.ndarray) -> float:
    """Mean overlap of the index's top-10 with the exact inner-product top-10 over `items`
    (rows 1..n of the table), for the user `vectors`."""
    k = min(10, len(items))
    exact = np.empty((len(vectors), k), dtype=np.int64)
    for r in range(0, len(vectors), 256):
        s = vectors[r : r + 256] @ items.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        exact[r : r + 256] = top + 1
    got, _ = ann(vectors, np.full((len(vectors), 1), -1, np.int64), k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, exact, strict=True)]))


def export_retrieval(
    model: RecBLR, item_ids: Sequence[str], path: str | os.PathLike, *, top_k: int, opset: int,
    m: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = DEFAULT_EF_SEARCH,
    verify=None, check=None,
) -> tuple[Path, IndexBuild]:
    """Build the index; `verify(ann)` may refuse it before anything is written; then write the
    index and the retrieval cell (`check(tmp_cell)` runs before the cell's rename)."""
    if not 1 <= top_k <= model.cfg.n_items:
        raise RecblrError(f"--top-k must be between 1 and the catalog size {model.cfg.n_items}, got {top_k}")
    for flag, value in (("--ann-m", m), ("--ann-ef-construction", ef_construction), ("--ann-ef", ef_search)):
        if value < 1:
            raise RecblrError(f"{flag} {value}: must be at least 1")
    check_opset(opset)
    _target_dir(Path(path))
    vectors = item_vectors(model)
    t0 = time.perf_counter()
    index = build_index(vectors, m, ef_construction)
    seconds = time.perf_counter() - t0
    info = IndexInfo(weights_sha256(model, "fp32"), len(vectors), vectors.shape[1], m, ef_construction, ef_search)
    index.set_ef(ef_search)
    if verify is not None:
        verify(AnnTopK(index, info))
    proto = retrieval_to_proto(model, item_ids, top_k, opset)
    size = write_index(path, index, info)
    return save_cell_proto(proto, path, check=check), IndexBuild(info, seconds, size)
