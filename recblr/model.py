"""The RecBLR network (spec: shared/spec/RECBLR.md).

State convention: a user's recurrent state is one packed float tensor of `state_size`
floats per user: for each layer, the last K-1 conv inputs (oldest first) then h. The same
layout is the ONNX cell's `state` (recblr.runtime.contract), so a window that starts in the
middle of a history, a streamed event and an exported step all share one representation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from recblr.config import ModelConfig
from recblr.kernels import bd_lru
from recblr.kernels.reference import bd_lru_gates


def lambda_init(channels: int, a_min: float = 0.9, a_max: float = 0.999) -> torch.Tensor:
    """Lambda values so that exp(-softplus(Lambda)) spans [a_min, a_max] (reference init)."""
    # softplus(lam) = -ln(a)  =>  lam = log(expm1(-ln a))
    lo = math.log(math.expm1(-math.log(a_min)))
    hi = math.log(math.expm1(-math.log(a_max)))
    return torch.linspace(lo, hi, channels)


class LayerState(NamedTuple):
    """One layer's recurrent state: what it carries from one event to the next."""

    conv: torch.Tensor  # (B, K-1, C) the last K-1 conv inputs, oldest first
    h: torch.Tensor  # (B, C) the BD-LRU state


def split_state(state: torch.Tensor, cfg: ModelConfig) -> list[LayerState]:
    """The packed (B, state_size) state as one `LayerState` per layer (views, no copies)."""
    k, c, n = cfg.conv_width, cfg.inner_dim, cfg.layer_state_size
    layers = []
    for i in range(cfg.n_layers):
        s = state[:, i * n : (i + 1) * n]
        layers.append(LayerState(s[:, : (k - 1) * c].unflatten(1, (k - 1, c)), s[:, (k - 1) * c :]))
    return layers


def pack_state(layers: list[LayerState]) -> torch.Tensor:
    """Inverse of `split_state`: per layer, the conv inputs (flattened) then h."""
    return torch.cat([t for s in layers for t in (s.conv.flatten(1), s.h)], dim=1)


class BDLRU(nn.Module):
    """Behaviour-dependent linear recurrent unit: gates from the input only."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate_proj = nn.Linear(channels, 2 * channels)
        self.lam = nn.Parameter(lambda_init(channels))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
        """Every state h_t (B, T, C) for inputs x (B, T, C), through the dispatched scan."""
        r_pre, i_pre = self.gate_proj(x).chunk(2, dim=-1)
        hs, _ = bd_lru(x, r_pre, i_pre, self.lam, h0)
        return hs

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The next state for one input x (B, C), in x's dtype."""
        r_pre, i_pre = self.gate_proj(x).chunk(2, dim=-1)
        a, b = bd_lru_gates(r_pre, i_pre, self.lam)
        return a * h + b * x


class GatedRecurrentLayer(nn.Module):
    """in_proj -> causal depthwise conv -> SiLU -> BD-LRU, gated by SiLU(z) -> out_proj."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, c, k = cfg.dim, cfg.inner_dim, cfg.conv_width
        self.conv_width = k
        self.in_proj = nn.Linear(d, 2 * c, bias=False)
        # Depthwise conv kept as (C, K) taps: applied along T without transposes.
        self.conv_weight = nn.Parameter(torch.empty(c, k))
        self.conv_bias = nn.Parameter(torch.empty(c))
        bound = 1.0 / math.sqrt(k)  # nn.Conv1d's default init for a depthwise conv
        nn.init.uniform_(self.conv_weight, -bound, bound)
        nn.init.uniform_(self.conv_bias, -bound, bound)
        self.lru = BDLRU(c)
        self.out_proj = nn.Linear(c, d, bias=False)

    def forward(
        self, h: torch.Tensor, state: LayerState, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        """h (B,T,D) -> output (B,T,D) and the state after each row's `lengths` real items."""
        B, T, _ = h.shape
        k = self.conv_width
        c = self.conv_weight.shape[0]
        x, z = self.in_proj(h).chunk(2, dim=-1)
        xp = torch.cat([state.conv.to(x.dtype), x], dim=1)  # (B, T+K-1, C)
        conv = self.conv_bias + sum(xp[:, j : j + T] * self.conv_weight[:, j] for j in range(k))
        xc = F.silu(conv)
        hs = self.lru(xc, state.h)
        out = self.out_proj(hs * F.silu(z))
        # State after the last real item: xp rows lengths..lengths+K-2, h at lengths (h0 first).
        idx = lengths.view(B, 1) + torch.arange(k - 1, device=h.device).view(1, k - 1)
        new_conv = xp.gather(1, idx.unsqueeze(-1).expand(B, k - 1, c))
        hs_ext = torch.cat([state.h.unsqueeze(1).to(hs.dtype), hs], dim=1)
        new_h = hs_ext.gather(1, lengths.view(B, 1, 1).expand(B, 1, c)).squeeze(1)
        return out, LayerState(new_conv, new_h)

    def step(self, h: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """One event: h (B,D) -> output (B,D) and the next state (what `forward` does at one position)."""
        k = self.conv_width
        x, z = self.in_proj(h).chunk(2, dim=-1)
        w = self.conv_weight  # (C, K); tap K-1 multiplies the newest input
        conv = self.conv_bias + (state.conv * w[:, : k - 1].t()).sum(dim=1) + x * w[:, k - 1]
        xc = F.silu(conv)
        h_new = self.lru.step(xc, state.h)
        out = self.out_proj(h_new * F.silu(z))
        new_conv = torch.cat([state.conv, x.unsqueeze(1)], dim=1)[:, 1:]
        return out, LayerState(new_conv, h_new)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.w2 = nn.Linear(4 * cfg.dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(self.drop(self.w2(self.drop(F.silu(self.w1(h))))) + h)


class BehaviorLayer(nn.Module):
    """One behaviour-modelling layer: gated recurrent layer + residual LN, then the FFN."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.recurrent = GatedRecurrentLayer(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.ffn = FeedForward(cfg)

    def forward(
        self, h: torch.Tensor, state: LayerState, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, LayerState]:
        out, new_state = self.recurrent(h, state, lengths)
        h = self.norm(self.drop(out) + h)
        return self.ffn(h), new_state

    def step(self, h: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        out, new_state = self.recurrent.step(h, state)
        h = self.norm(self.drop(out) + h)
        return self.ffn(h), new_state


class RecBLR(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.emb_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.layers = nn.ModuleList(BehaviorLayer(cfg) for _ in range(cfg.n_layers))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def sparse_item_gradients(self, on: bool) -> None:
        """Make the item table's gradient sparse (only the rows a step looked up) or dense again:
        what lets SparseAdam train a 10^6-row table without a table-sized pass per step. It changes
        no value, only how the gradient is stored; export and serving never see it."""
        self.item_emb.sparse = on

    def lambda_parameters(self) -> dict[str, nn.Parameter]:
        """Each BD-LRU's Lambda by name: the decay floors, which training and analysis single out."""
        return {f"{n}.lam": m.lam for n, m in self.named_modules() if isinstance(m, BDLRU)}

    def initial_state(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """The empty history's state (all zeros)."""
        return torch.zeros(batch, self.cfg.state_size, device=device)

    def forward(
        self,
        items: torch.Tensor,
        state: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode right-padded item sequences (B,T) continuing from `state`.

        Returns the hidden vectors (B,T,D) and the state after each row's `lengths` real items
        (default: all T). Positions past a row's length are garbage but never reach earlier
        positions or the returned state.
        """
        B, T = items.shape
        if state is None:
            state = self.initial_state(B, items.device)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=items.device)
        h = self.emb_norm(self.emb_drop(self.item_emb(items)))
        new_states = []
        for layer, s in zip(self.layers, split_state(state, self.cfg), strict=True):
            h, s = layer(h, s, lengths)
            new_states.append(s)
        return h, pack_state(new_states)

    def step(self, item: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One event per row: item (B,) after packed `state` -> hidden vector (B, D) and the next
        packed state; the same as `forward` at one position, in the weights' dtype."""
        h = self.emb_norm(self.emb_drop(self.item_emb(item)))
        new_states = []
        for layer, s in zip(self.layers, split_state(state, self.cfg), strict=True):
            h, s = layer.step(h, s)
            new_states.append(s)
        return h, pack_state(new_states)

    def item_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item for hidden vectors h (..., D); padding gets -inf."""
        logits = h @ self.item_emb.weight.t()
        logits[..., 0] = float("-inf")
        return logits

    def last_hidden(self, items: torch.Tensor, lengths: torch.Tensor, state=None) -> torch.Tensor:
        """Hidden vector at each row's last real position (B, D)."""
        h, _ = self(items, state, lengths)
        idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        return h.gather(1, idx).squeeze(1)


def parameter_count(cfg: ModelConfig) -> int:
    """Number of parameters per the spec's formula."""
    d, c, k, n = cfg.dim, cfg.inner_dim, cfg.conv_width, cfg.n_items + 1
    per_layer = (
        d * 2 * c  # in_proj (no bias)
        + c * k + c  # depthwise conv + bias
        + c * 2 * c + 2 * c  # gate projection (r, i) + bias
        + c  # Lambda
        + c * d  # out_proj (no bias)
        + 2 * d  # LayerNorm after the recurrent layer
        + d * 4 * d + 4 * d + 4 * d * d + d  # FFN
        + 2 * d  # FFN LayerNorm
    )
    return n * d + 2 * d + cfg.n_layers * per_layer
