"""Per-step cell export: the RecBLR recurrence as one ONNX step (runtime/contract.py).

The names below load on first use, so `recblr.export.cli` (and with it `recblr --help`)
imports without torch.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "RecBLRCell": "recblr.export.cell",
    "DEFAULT_OPSET": "recblr.export.onnx_export",
    "DEFAULT_TOP_K": "recblr.export.onnx_export",
    "MAX_OPSET": "recblr.export.onnx_export",
    "MIN_OPSET": "recblr.export.onnx_export",
    "build_cell": "recblr.export.onnx_export",
    "cell_metadata": "recblr.export.onnx_export",
    "export_cell": "recblr.export.onnx_export",
    "weights_sha256": "recblr.export.onnx_export",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'recblr.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
