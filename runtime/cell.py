"""Opening an exported cell: metadata checks, execution-provider choice, ORT sessions.

Nothing here imports torch (nor onnx).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from recblr.runtime import contract as C
from recblr.runtime.ann import OUTPUT_USER_VECTOR, is_retrieval_cell
from recblr.runtime.errors import CellError

log = logging.getLogger("recblr.runtime")

_QUIET = 3  # ORT severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(_QUIET)
    return ort


@dataclass(frozen=True)
class CellInfo:
    """What the runtime knows about a cell: its metadata and a hash of the file."""

    path: Path
    sha256: str  # of the ONNX file's bytes (shown as the cell's id; states use state_key)
    weights_sha256: str
    config: dict
    state_size: int
    top_k: int
    items: tuple[str, ...]  # items[i] = external id of internal index i; items[0] = padding
    format_version: int

    @property
    def n_items(self) -> int:
        return len(self.items) - 1

    @property
    def short_hash(self) -> str:
        return self.sha256[:16]

    @property
    def state_key(self) -> str:
        """Identifies the states this cell makes and reads: a stored state made under another
        key is reset. A hash of what determines a state -- the weights (the file's hash when
        the cell lacks `recblr.weights_sha256`), the state size, the model config and the item
        vocabulary (states hold internal item ids) -- not of the file's bytes, so a re-export
        that leaves `recblr.weights_sha256` unchanged keeps every user's state."""
        ident = {
            "weights": self.weights_sha256 or ("file:" + self.sha256),
            "state_size": self.state_size,
            "config": self.config,
            "items": self.items,
        }
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_cell_info(path: str | os.PathLike, meta: dict[str, str]) -> CellInfo:
    """Check a cell's metadata_props against the contract; raise CellError with one clear line."""
    p = Path(path)
    if meta.get(C.META_FORMAT) != C.FORMAT_NAME:
        raise CellError(
            f"{p}: not a recblr cell (metadata {C.META_FORMAT!r} is "
            f"{meta.get(C.META_FORMAT)!r}, expected {C.FORMAT_NAME!r}); export it with recblr-export"
        )
    version = meta.get(C.META_FORMAT_VERSION)
    if version != str(C.FORMAT_VERSION):
        raise CellError(
            f"{p}: cell format version {version!r} but this runtime reads version "
            f"{C.FORMAT_VERSION}; re-export the cell with a matching recblr"
        )
    missing = [
        k for k in (C.META_CONFIG, C.META_STATE_SIZE, C.META_TOP_K, C.META_ITEMS) if k not in meta
    ]
    if missing:
        raise CellError(f"{p}: cell metadata lacks {', '.join(missing)}; re-export the cell")
    try:
        config = json.loads(meta[C.META_CONFIG])
        state_size = int(meta[C.META_STATE_SIZE])
        top_k = int(meta[C.META_TOP_K])
        items = json.loads(meta[C.META_ITEMS])
    except (ValueError, TypeError) as e:
        raise CellError(f"{p}: cell metadata is malformed ({e}); re-export the cell") from None
    if not isinstance(items, list) or len(items) < 2 or state_size <= 0 or top_k <= 0:
        raise CellError(f"{p}: cell metadata is inconsistent (items, state size or K)")
    return CellInfo(
        path=p,
        sha256=_file_sha256(p),
        weights_sha256=meta.get(C.META_WEIGHTS_SHA256, ""),
        config=config if isinstance(config, dict) else {},
        state_size=state_size,
        top_k=top_k,
        items=tuple(str(x) for x in items),
        format_version=int(version),
    )


@lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when a CUDA device can actually be used (not just compiled into onnxruntime-gpu).

    onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a driver; asking it
    for a session there logs errors and silently falls back. We check the driver first: load
    libcuda, cuInit, and count devices.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        if "CUDAExecutionProvider" not in _ort().get_available_providers():
            return False
    except Exception:  # pragma: no cover - broken install
        return False
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    try:
        if lib.cuInit(0) != 0:
            return False
        n = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(n)) != 0:
            return False
        return n.value > 0
    except Exception:  # pragma: no cover
        return False


def resolve_providers(providers: str | list[str] = "auto") -> list[str]:
    """'auto' -> CUDA (then CPU) when usable, else CPU; 'cpu'/'cuda' or an explicit list."""
    if isinstance(providers, (list, tuple)):
        return list(providers)
    p = providers.lower()
    if p == "cpu":
        return ["CPUExecutionProvider"]
    if p == "cuda":
        if not cuda_usable():
            raise CellError("--providers cuda: no usable CUDA device here; use auto or cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if p == "auto":
        if cuda_usable():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    raise CellError(f"unknown providers {providers!r}: use auto, cpu or cuda")


def session_options(threads: int | None = None):
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = _QUIET
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def open_cell(path: str | os.PathLike, providers="auto", threads: int | None = None):
    """Open a cell: returns (session, CellInfo, providers actually used)."""
    p = Path(path)
    try:
        found = p.is_file()
    except OSError as e:  # the path cannot even be looked up (a name too long, ...)
        raise CellError(f"{p}: not a usable path ({e.strerror or e}); pass the cell file's path") from None
    if not found:
        raise CellError(f"{p}: no such cell file; export one with recblr-export")
    ort = _ort()
    chosen = resolve_providers(providers)
    try:
        sess = ort.InferenceSession(str(p), sess_options=session_options(threads), providers=chosen)
    except Exception as e:  # onnxruntime raises its own exception types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CellError(f"{p}: onnxruntime cannot load the cell: {msg}") from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    info = read_cell_info(p, meta)
    names_in = {i.name for i in sess.get_inputs()}
    names_out = {o.name for o in sess.get_outputs()}
    need_in = {C.INPUT_ITEM, C.INPUT_STATE, C.INPUT_EXCLUDE}
    need_out = {C.OUTPUT_NEXT_STATE, C.OUTPUT_TOP_ITEMS, C.OUTPUT_TOP_SCORES}
    if is_retrieval_cell(meta):  # scores in the index beside it (recblr.runtime.ann)
        need_in, need_out = {C.INPUT_ITEM, C.INPUT_STATE}, {C.OUTPUT_NEXT_STATE, OUTPUT_USER_VECTOR}
    if not need_in <= names_in or not need_out <= names_out:
        raise CellError(
            f"{p}: cell graph lacks inputs {sorted(need_in - names_in)} / outputs "
            f"{sorted(need_out - names_out)}; re-export the cell"
        )
    return sess, info, sess.get_providers()
