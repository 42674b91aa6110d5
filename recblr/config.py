"""Configuration dataclasses; both are saved inside every checkpoint.

Each checks its own settings when built (`__post_init__`), so a bad value fails the same way
from the CLI, a script or a saved checkpoint: one `RecblrError` naming the setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar, Self

from recblr.errors import RecblrError


def require(ok: bool, name: str, value: object, want: str) -> None:
    """One setting's check: a `RecblrError` naming the setting, its value and what it must be."""
    if not ok:
        raise RecblrError(f"{name} {value!r}: must be {want}")


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, name, value, "one of " + ", ".join(choices))


@dataclass
class NetworkSizes:
    """What every sequence network here is sized by: catalog, width, depth, dropout, LayerNorm
    eps. RecBLR's config and the baselines' extend it, so all check their sizes the same way."""

    n_items: int  # catalog size without padding; embeddings have n_items + 1 rows
    dim: int = 64
    n_layers: int = 2
    dropout: float = 0.2
    ln_eps: float = 1e-12

    _positive: ClassVar[tuple[str, ...]] = ("n_items", "dim", "n_layers")

    def __post_init__(self) -> None:
        for name in self._positive:
            value = getattr(self, name)
            require(value >= 1, name, value, ">= 1")
        require(0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        require(self.ln_eps > 0, "ln_eps", self.ln_eps, "> 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass
class ModelConfig(NetworkSizes):
    """Sizes of the RecBLR network (defaults from the paper, see shared spec)."""

    expand: int = 2
    conv_width: int = 4

    _positive: ClassVar[tuple[str, ...]] = (*NetworkSizes._positive, "expand", "conv_width")

    @property
    def inner_dim(self) -> int:
        return self.expand * self.dim

    @property
    def layer_state_size(self) -> int:
        """Floats one layer carries between events: K-1 conv inputs plus h."""
        return self.conv_width * self.inner_dim

    @property
    def state_size(self) -> int:
        return self.n_layers * self.layer_state_size


LOSSES = ("ce", "bpr", "sampled")
SAMPLERS = ("uniform", "popularity")
SPARSE_LOSSES = ("bpr", "sampled")  # losses that touch only some item rows per step
EXAMPLE_MODES = ("sequence", "prefix")
SELECT_MODES = ("stream", "window")
WINDOW_OFFSETS = ("fixed", "random")


@dataclass
class TrainConfig:
    """How a model is trained (the paper's defaults where it gives them)."""

    max_len: int = 200  # window-mode evaluation length (and training window unless set)
    train_window: int | None = None  # training window length; None = max_len
    window_offsets: str = "fixed"  # "fixed": cuts at multiples of the window; "random" per epoch
    batch_size: int = 2048  # (prefix, next item) pairs per step
    lr: float = 1e-3
    lambda_lr_scale: float = 1.0  # Lambda's learning rate is lr times this (1 = the paper's)
    epochs: int = 200
    patience: int = 10
    loss: str = "ce"  # "ce" (full catalog), "bpr" (one sampled negative) or "sampled" (softmax)
    negatives: int = 1024  # --loss sampled: negatives shared by each batch
    sampler: str = "uniform"  # --loss sampled: "uniform" or "popularity" proposal
    sparse_embeddings: bool = False  # sampled/bpr: sparse item-table gradient, SparseAdam for the table
    example_mode: str = "sequence"  # "sequence" (whole windows) or "prefix" (paper ref code)
    select_mode: str = "stream"  # evaluation mode used for early stopping
    eval_batch_size: int = 4096
    seed: int = 2024
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_len", "batch_size", "epochs", "patience", "eval_batch_size"):
            require(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        if self.train_window is not None:
            require(self.train_window >= 1, "train_window", self.train_window, ">= 1")
        require(self.lr > 0, "lr", self.lr, "> 0")
        require(self.lambda_lr_scale > 0, "lambda_lr_scale", self.lambda_lr_scale, "> 0")
        _one_of("loss", self.loss, LOSSES)
        require(self.negatives >= 1, "negatives", self.negatives, ">= 1")
        _one_of("sampler", self.sampler, SAMPLERS)
        require(not self.sparse_embeddings or self.loss in SPARSE_LOSSES, "sparse_embeddings", self.sparse_embeddings,
                f"False with --loss {self.loss} (the full softmax touches every item row, so its gradient is "
                "dense); use --loss sampled or bpr, or drop --sparse-embeddings")
        _one_of("example_mode", self.example_mode, EXAMPLE_MODES)
        _one_of("select_mode", self.select_mode, SELECT_MODES)
        _one_of("window_offsets", self.window_offsets, WINDOW_OFFSETS)

    @property
    def window(self) -> int:
        """Length of a training window."""
        return self.max_len if self.train_window is None else self.train_window

    def to_dict(self) -> dict:
        return asdict(self)
