"""The per-step RecBLR cell: one recurrent step for a batch of users.

The cell is a view of a trained `RecBLR`: it holds references to the model's own modules
(never copies, never trained on its own) and replays, for one new item, exactly what the
full-sequence forward computes at that position. The packed state follows
`recblr.runtime.contract` (per layer: the last K-1 conv inputs, oldest first, then h).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recblr.kernels.reference import bd_lru_gates
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
        self.n_layers = cfg.n_layers
        self.conv_width = cfg.conv_width
        self.inner_dim = cfg.inner_dim
        self.layer_state = cfg.layer_state_size
        self.n_rows = cfg.n_items + 1

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.item_emb.weight.dtype

    def step(self, item: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: the hidden vector (B, D) after `item` and the next packed state."""
        m = self.model
        dt = self.compute_dtype
        k, c, n = self.conv_width, self.inner_dim, self.layer_state
        state = state.to(dt)
        h = m.emb_norm(m.item_emb(item))
        new_states = []
        for i, layer in enumerate(m.layers):
            rec = layer.recurrent
            s = state[:, i * n : (i + 1) * n]
            tail = s[:, : (k - 1) * c].reshape(-1, k - 1, c)  # oldest first
            h_prev = s[:, (k - 1) * c :]
            x, z = rec.in_proj(h).chunk(2, dim=-1)
            w = rec.conv_weight  # (C, K); tap K-1 multiplies the newest input
            conv = rec.conv_bias + (tail * w[:, : k - 1].t()).sum(dim=1) + x * w[:, k - 1]
            xc = F.silu(conv)
            r_pre, i_pre = rec.lru.gate_proj(xc).chunk(2, dim=-1)
            a, b = bd_lru_gates(r_pre, i_pre, rec.lru.lam)
            h_new = a * h_prev + b * xc
            out = rec.out_proj(h_new * F.silu(z))
            h = layer.norm(out + h)
            h = layer.ffn(h)
            new_tail = torch.cat([tail[:, 1:], x.unsqueeze(1)], dim=1).reshape(-1, (k - 1) * c)
            new_states.append(new_tail)
            new_states.append(h_new)
        return h, torch.cat(new_states, dim=1).float()

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
