"""Scan ops for the BD-LRU; `recblr.kernels.dispatch` is the one place that picks a backend."""

from recblr.kernels.dispatch import (
    BACKENDS,
    ENV_VAR,
    ScanBackendError,
    available_backends,
    bd_lru,
    get_backend,
    linear_scan,
)

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "ScanBackendError",
    "available_backends",
    "bd_lru",
    "get_backend",
    "linear_scan",
]
