"""The per-step RecBLR cell: one recurrent step for a batch of users.

The cell is a view of a trained `RecBLR`: it holds the model itself (never a copy, never
trained on its own) and is "embed, step each layer, score": `RecBLR.step` (each layer keeps
its `step` next to its full-sequence `forward`), then the scores of the whole catalog. The
packed state follows `recblr.runtime.contract` (per layer: the last K-1 conv inputs, oldest
first, then h).
"""

from __future__ import annotations

import torch
from torch import nn

from recblr.model import RecBLR


class RecBLRCell(nn.Module):
    """(item [B], state [B,S], exclude [B,X]) -> (next_state [B,S], top_items [B,K], top_scores [B,K]).

    `compute_dtype` other than float32 runs the network in that precision (the model's
    weights must already be in it); the state and the scores stay float32 at the boundary.
    """

    def __init__(self, model: RecBLR, top_k: int):
        super().__init__()
        cfg = model.cfg
        if not 1 <= top_k <= cfg.n_items:
            raise ValueError(f"top_k must be in 1..n_items={cfg.n_items}, got {top_k}")
        self.model = model
        self.top_k = int(top_k)
        self.n_rows = cfg.n_items + 1

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.item_emb.weight.dtype

    def step(self, item: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: the hidden vector (B, D) after `item` and the next packed state (float32)."""
        h, next_state = self.model.step(item, state.to(self.compute_dtype))
        return h, next_state.float()

    def scores(self, h: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
        """Float32 scores of every catalog row; padding and `exclude` (-1 = none) get -inf."""
        logits = (h @ self.model.item_emb.weight.t()).float()
        # -1 entries (and anything outside the catalog) are redirected to row 0, the padding
        # id, which is masked anyway; so the scatter never sees an invalid index.
        valid = (exclude > 0) & (exclude < self.n_rows)
        idx = torch.where(valid, exclude, torch.zeros_like(exclude))
        idx = torch.cat([torch.zeros_like(idx[:, :1]), idx], dim=1)
        neg = torch.full(idx.shape, float("-inf"), dtype=logits.dtype, device=logits.device)
        return logits.scatter(1, idx, neg)

    def forward(
        self, item: torch.Tensor, state: torch.Tensor, exclude: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, next_state = self.step(item, state)
        top_scores, top_items = torch.topk(self.scores(h, exclude), self.top_k, dim=1)
        return next_state, top_items, top_scores
