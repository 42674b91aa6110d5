"""Export the per-step cell to one self-describing ONNX file (runtime/contract.py).

Exporter: torch.onnx's torch.export-based exporter (`dynamo=True`, the default since
PyTorch 2.9; the TorchScript exporter is deprecated and announced for removal). It captures
the cell with symbolic batch / exclude-width dimensions, folds parameter-only expressions
(softplus(Lambda), transposed weights) into initializers and needs no custom symbolics.

Every file lands atomically: the cell (and its external data, for models past the protobuf
limit) is written into a temporary folder inside the target folder, checked, and only then
renamed into place, so a failed export never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

from recblr import __version__
from recblr.errors import RecblrError
from recblr.export.cell import RecBLRCell
from recblr.model import RecBLR
from recblr.runtime import contract as C

DEFAULT_OPSET = 18
# Opsets the cell exports to, checked with torch 2.13 + onnxscript 0.7 + onnx 1.23 +
# onnxruntime 1.31: below 18 the exporter's graph uses opset-18 operators (Split with
# num_outputs, LayerNormalization) that the converter cannot lower (< 17 it silently keeps 18,
# 17 gives an invalid graph); above 25 onnxscript's converter hands off to the onnx C API,
# whose output recent onnxruntime releases do not load (27+) or fails outright (29+).
# Capped at what the installed onnx knows. Older onnxruntime releases load fewer opsets
# (1.18: up to 21).
MIN_OPSET = 18
MAX_OPSET = min(25, onnx.defs.onnx_opset_version())
DEFAULT_TOP_K = 100
PRECISIONS = ("fp32", "fp16", "int8")
# Measured on ML-100K (benchmarks/cell.py): top-10 agreement with fp32 must stay >= this for a
# precision to be offered; fp16 and int8 both pass (see benchmarks/results/cell.json).
MIN_TOP10_AGREEMENT = 0.95
# Serialized protobufs cannot exceed 2 GiB; stay clear of it (metadata, graph) and move the
# weights to `<name>.data` beyond this many initializer bytes.
MAX_INLINE_BYTES = 1_800_000_000
# Extra metadata (outside the contract; informative only).
META_PRECISION = "recblr.precision"
META_RECBLR_VERSION = "recblr.version"


def _as_model_and_items(
    model_or_checkpoint: Any, item_ids: Sequence[str] | None
) -> tuple[RecBLR, list[str]]:
    obj = model_or_checkpoint
    if isinstance(obj, (str, os.PathLike)):
        from recblr.checkpoint import load_checkpoint

        obj = load_checkpoint(obj)
    if isinstance(obj, RecBLR):
        model = obj
        items = item_ids
    elif hasattr(obj, "model") and hasattr(obj, "item_ids"):  # a recblr Checkpoint
        model = obj.model
        items = item_ids if item_ids is not None else obj.item_ids
    else:
        raise RecblrError(
            f"export_cell: expected a RecBLR model, a Checkpoint or a checkpoint path, "
            f"got {type(obj).__name__}"
        )
    n_rows = model.cfg.n_items + 1
    if items is None:
        items = default_item_ids(model.cfg.n_items)
    items = [str(x) for x in items]
    if len(items) != n_rows:
        raise RecblrError(
            f"item_ids has {len(items)} entries but the model has {n_rows} rows "
            f"(n_items={model.cfg.n_items} plus padding at index 0); pass one id per row"
        )
    return model, items


def default_item_ids(n_items: int) -> list[str]:
    """Vocabulary used when none is given: index i -> str(i) (index 0 is the padding)."""
    return [str(i) for i in range(n_items + 1)]


def weights_sha256(model: RecBLR, precision: str = "fp32") -> str:
    """Hex SHA-256 of the trained weights (state_dict, sorted by name) and the precision.

    It identifies the recurrent state machine, not the file: re-exporting the same weights
    with another top-K or opset keeps the hash, so the runtime keeps every user's state.
    """
    digest = hashlib.sha256(f"precision={precision}|".encode())
    for name, t in sorted(model.state_dict().items()):
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}|{list(arr.shape)}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def cell_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The file's metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    """Replace the given metadata_props keys (others are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    for k, v in [*keep, *meta.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def _contract_metadata(
    cfg_dict: dict, state_size: int, top_k: int, opset: int, items: list[str], precision: str
) -> dict[str, str]:
    return {
        C.META_FORMAT: C.FORMAT_NAME,
        C.META_FORMAT_VERSION: str(C.FORMAT_VERSION),
        C.META_CONFIG: json.dumps(cfg_dict, sort_keys=True),
        C.META_STATE_SIZE: str(state_size),
        C.META_TOP_K: str(top_k),
        C.META_OPSET: str(opset),
        C.META_ITEMS: json.dumps(items, ensure_ascii=False),
        META_PRECISION: precision,
        META_RECBLR_VERSION: __version__,
    }


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warns about unrelated optional packages."""
    # onnxscript's version converter logs warnings (with tracebacks) through its own logger.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_opset(opset: int) -> int:
    """`opset` if the cell can be exported to it, else RecblrError naming the supported range."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise RecblrError(
            f"--opset {opset}: unsupported; the cell exports to ONNX opset {MIN_OPSET} to "
            f"{MAX_OPSET} (default {DEFAULT_OPSET})"
        )
    return opset


def proto_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain (ai.onnx) opset the file imports, None if it imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def build_cell(model: RecBLR, top_k: int, precision: str = "fp32") -> RecBLRCell:
    """The cell module for `model` (fp32 shares the model's parameters; fp16 uses a copy)."""
    if precision not in PRECISIONS:
        raise RecblrError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not 1 <= top_k <= model.cfg.n_items:
        raise RecblrError(
            f"--top-k must be between 1 and the catalog size {model.cfg.n_items}, got {top_k}"
        )
    if precision == "fp16":
        model = copy.deepcopy(model).half()
    # int8 starts from the fp32 graph (quantised after export, see _quantize_int8).
    return RecBLRCell(model, top_k).eval()


def _to_onnx(cell: RecBLRCell, opset: int) -> onnx.ModelProto:
    cfg = cell.model.cfg
    example = (
        torch.tensor([1, min(2, cfg.n_items)], dtype=torch.long),
        torch.zeros(2, cfg.state_size),
        torch.full((2, 2), -1, dtype=torch.long),
    )
    batch = torch.export.Dim("batch")
    n_exclude = torch.export.Dim("n_exclude")
    cell.eval()
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            cell,
            example,
            None,
            dynamo=True,
            verbose=False,
            opset_version=opset,
            input_names=[C.INPUT_ITEM, C.INPUT_STATE, C.INPUT_EXCLUDE],
            output_names=[C.OUTPUT_NEXT_STATE, C.OUTPUT_TOP_ITEMS, C.OUTPUT_TOP_SCORES],
            dynamic_shapes={
                "item": {0: batch},
                "state": {0: batch},
                "exclude": {0: batch, 1: n_exclude},
            },
        )
        proto = program.model_proto
    proto.producer_name = "recblr"
    proto.producer_version = __version__
    proto.doc_string = (
        "RecBLR per-step cell: (item, state, exclude) -> (next_state, top_items, top_scores)"
    )
    return proto


def _quantize_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantisation (onnxruntime.quantization): int8 weights of the MatMul/Gemm
    layers, activations quantised per call; state, gates and scores stay float32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = copy.deepcopy(proto)
    # The exporter's value_info (shapes of initializers too) trips the quantiser's shape
    # inference after it rewrites weights; ORT re-infers shapes anyway.
    del proto.graph.value_info[:]
    big = _initializer_bytes(proto) > MAX_INLINE_BYTES
    with tempfile.TemporaryDirectory(prefix="recblr-int8-") as tmp, _quiet():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, src, save_as_external_data=big)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, use_external_data_format=big)
        out = onnx.load(dst)  # loads external data too
    return out


def _initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer) + sum(
        4 * len(t.float_data) + 8 * len(t.int64_data) for t in model.graph.initializer
    )


def _target_dir(path: Path) -> Path:
    """The output's folder, created if needed; RecblrError when it cannot hold the file."""
    if path.is_dir():
        raise RecblrError(f"output {path} is a directory; give a file name such as {path}/cell.onnx")
    target_dir = path.parent
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RecblrError(
                    f"cannot write the output {path}: {parent} is a file, not a folder; "
                    "choose another location with -o"
                )
            break
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecblrError(
            f"cannot write the output {path}: {e.strerror or e}; choose a writable location with -o"
        ) from e
    if not os.access(target_dir, os.W_OK | os.X_OK):
        raise RecblrError(
            f"cannot write the output {path}: folder {target_dir} is not writable; "
            "choose a writable location with -o"
        )
    return target_dir


def save_cell_proto(
    proto: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    max_inline_bytes: int = MAX_INLINE_BYTES,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Save atomically: temp folder in the target folder -> checker -> optional `check(tmp)`
    -> rename. Weights go to `<name>.data` when they pass `max_inline_bytes`."""
    path = Path(path)
    target_dir = _target_dir(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=target_dir))
    except OSError as e:
        raise RecblrError(
            f"cannot write the output {path}: {e.strerror or e}; choose a writable location with -o"
        ) from e
    try:
        tmp_model = tmp / path.name
        data_name = path.name + ".data"
        external = _initializer_bytes(proto) > max_inline_bytes
        try:
            if external:
                onnx.save_model(
                    proto,
                    tmp_model,
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_name,
                    size_threshold=1024,
                )
            else:
                onnx.save_model(proto, tmp_model)
        except OSError as e:
            raise RecblrError(
                f"cannot write the output {path}: {e.strerror or e}; free space or choose another "
                "location with -o"
            ) from e
        onnx.checker.check_model(str(tmp_model), full_check=True)
        if check is not None:
            check(tmp_model)
        try:
            if external:
                os.replace(tmp / data_name, path.parent / data_name)
            os.replace(tmp_model, path)
        except OSError as e:
            raise RecblrError(f"cannot write the output {path}: {e.strerror or e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def cell_to_proto(
    model: RecBLR,
    item_ids: Sequence[str],
    *,
    top_k: int,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
) -> onnx.ModelProto:
    """The in-memory ONNX cell with its full metadata.

    Raises RecblrError when `opset` is outside MIN_OPSET..MAX_OPSET or the exported graph
    does not import the requested opset; `recblr.opset` is read back from the graph.
    """
    check_opset(opset)
    was_training = model.training
    try:
        # Puts the shared modules in eval mode.
        cell = build_cell(model, top_k, "fp32" if precision == "int8" else precision)
        proto = _to_onnx(cell, opset)
    finally:
        model.train(was_training)
    if precision == "int8":
        proto = _quantize_int8(proto)
    real_opset = proto_opset(proto)
    if real_opset != opset:
        raise RecblrError(
            f"--opset {opset}: the exporter produced a graph with opset {real_opset} instead; "
            f"use an opset from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})"
        )
    meta = _contract_metadata(
        model.cfg.to_dict(), model.cfg.state_size, top_k, real_opset, list(item_ids), precision
    )
    meta[C.META_WEIGHTS_SHA256] = weights_sha256(model, precision)
    set_metadata(proto, meta)
    return proto


def export_cell(
    model_or_checkpoint: Any,
    path: str | os.PathLike,
    *,
    top_k: int | None = None,
    item_ids: Sequence[str] | None = None,
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
    max_inline_bytes: int = MAX_INLINE_BYTES,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Export the per-step cell of a RecBLR model to `path` (an .onnx file) and return it.

    model_or_checkpoint: a `RecBLR`, a `recblr.checkpoint.Checkpoint` or a checkpoint path.
    top_k: K of `top_items`/`top_scores` (default min(100, n_items)).
    item_ids: external id of every internal index (index 0 = padding); default the
        checkpoint's, or str(i) for a bare model.
    opset: ONNX opset, MIN_OPSET..MAX_OPSET (default 18).
    precision: "fp32", "fp16" (weights and compute in float16; state/scores stay float32) or
        "int8" (dynamic quantisation of the weight matrices).
    check: called with the temporary file before it is renamed into place; raise to abort.
    Raises RecblrError for bad arguments and unwritable outputs (no partial file is left).
    """
    check_opset(opset)
    _target_dir(Path(path))  # fail before the (slow) export
    model, items = _as_model_and_items(model_or_checkpoint, item_ids)
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, model.cfg.n_items)
    proto = cell_to_proto(model, items, top_k=top_k, opset=opset, precision=precision)
    return save_cell_proto(proto, path, max_inline_bytes=max_inline_bytes, check=check)
