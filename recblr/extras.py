"""Which optional dependency group (pip extra) a command needs, and the one message when it is
missing. The base install serves only; training and export come with `recblr[train]`."""

from __future__ import annotations

import importlib.util

from recblr.errors import RecblrError

TRAIN_EXTRA_HINT = "training, evaluation, export and the data commands need the train extra: pip install 'recblr[train]'"


# What each group of commands imports beyond the base install (all of it comes with `train`).
DATA_MODULES = ("pyarrow",)  # recblr.data and recblr.readers: reading interaction files
TRAIN_MODULES = ("torch", *DATA_MODULES)
EXPORT_MODULES = ("torch", "onnx", "onnxscript", *DATA_MODULES)  # --verify reads the dataset


class MissingExtra(RecblrError):
    """A command needs packages that this install does not have (exit code 2)."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(command: str, modules: tuple[str, ...] = TRAIN_MODULES, extra: str = "train") -> None:
    """Raise one line naming the extra to install when `command` cannot run in this install."""
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise MissingExtra(
            f"`{command}` needs {', '.join(missing)}, which this install lacks; "
            f"install it with: pip install 'recblr[{extra}]'"
        )
