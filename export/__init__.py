"""Per-step cell export: the RecBLR recurrence as one ONNX step (runtime/contract.py)."""

from recblr.export.cell import RecBLRCell
from recblr.export.onnx_export import (
    DEFAULT_OPSET,
    DEFAULT_TOP_K,
    MAX_OPSET,
    MIN_OPSET,
    build_cell,
    cell_metadata,
    export_cell,
    weights_sha256,
)

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOP_K",
    "MAX_OPSET",
    "MIN_OPSET",
    "RecBLRCell",
    "build_cell",
    "cell_metadata",
    "export_cell",
    "weights_sha256",
]
