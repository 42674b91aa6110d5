"""Configuration dataclasses; both are saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class ModelConfig:
    """Sizes of the RecBLR network (defaults from the paper, see shared spec)."""

    n_items: int  # catalog size without padding; embeddings have n_items + 1 rows
    dim: int = 64
    n_layers: int = 2
    expand: int = 2
    conv_width: int = 4
    dropout: float = 0.2
    ln_eps: float = 1e-12

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


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
    example_mode: str = "sequence"  # "sequence" (whole windows) or "prefix" (paper ref code)
    select_mode: str = "stream"  # evaluation mode used for early stopping
    eval_batch_size: int = 4096
    seed: int = 2024
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)
