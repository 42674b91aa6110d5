"""The models a user would pick instead of RecBLR: SASRec and GRU4Rec (benchmark baselines).

Both speak RecBLR's interface, so the data loader, the training windows and the evaluator
take them unchanged: `forward(items, state, lengths) -> (hidden (B,T,D), state)`,
`item_scores(h)` (tied item embeddings, padding -inf), `last_hidden(items, lengths)`, and a
one-event `step` beside `forward`. They are not in the serving path (export and the runtime
know RecBLR only).

- GRU4Rec: one GRU layer; its state is the GRU hidden vector, so a window can start from
  the state its earlier items leave and a new event costs O(1).
- SASRec: post-LN Transformer blocks with learned absolute positions and a causal mask. It
  has no state: it sees at most `max_len` items, and a new event either re-encodes the
  history (`last_hidden`) or extends a key/value cache (`step`), which is exact only while
  the history fits in `max_len` positions (sliding the window shifts every position).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recblr.config import NetworkSizes, require
from recblr.model import RecBLR


@dataclass
class SASRecConfig(NetworkSizes):
    n_heads: int = 2
    inner_dim: int = 256
    max_len: int = 200

    _positive: ClassVar[tuple[str, ...]] = (*NetworkSizes._positive, "n_heads", "inner_dim", "max_len")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.dim % self.n_heads == 0, "dim", self.dim, f"a multiple of n_heads ({self.n_heads})")


@dataclass
class GRU4RecConfig:
    n_items: int
    dim: int = 64
    dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


_init_weights = RecBLR._init_weights  # the same initialisation as RecBLR's, for a fair comparison


class _TiedScores(nn.Module):
    """Scoring and last-position readout shared by both baselines (same as RecBLR's)."""

    item_emb: nn.Embedding
    item_scores = RecBLR.item_scores
    last_hidden = RecBLR.last_hidden


class GRU4Rec(_TiedScores):
    """Item embedding -> dropout -> one GRU layer; scores against the item embeddings."""

    def __init__(self, cfg: GRU4RecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.dim, batch_first=True)
        self.apply(_init_weights)
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)

    def initial_state(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(batch, self.cfg.dim, device=device)

    def forward(
        self, items: torch.Tensor, state: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden vectors (B,T,D) and the GRU state after each row's `lengths` real items."""
        B, T = items.shape
        if state is None:
            state = self.initial_state(B, items.device)
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=items.device)
        hs, _ = self.gru(self.emb_drop(self.item_emb(items)), state.unsqueeze(0).contiguous())
        hs_ext = torch.cat([state.unsqueeze(1), hs], dim=1)  # position 0: the state before any item
        new_state = hs_ext.gather(1, lengths.view(B, 1, 1).expand(B, 1, hs.shape[-1])).squeeze(1)
        return hs, new_state

    def step(self, item: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One new event per user: (item (B,), state (B,D)) -> (hidden (B,D), next state)."""
        _, h = self.gru(self.emb_drop(self.item_emb(item)).unsqueeze(1), state.unsqueeze(0).contiguous())
        return h[0], h[0]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"dim {cfg.dim} must be a multiple of n_heads {cfg.n_heads}")
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.attn_dropout = cfg.dropout

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, H, T, D/H)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, d = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * d))

    def forward(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal attention over x (B,T,D), and its keys/values; with `cache` (the keys/values
        of the positions before x), x is the newest position (T=1) and attends to them all."""
        q, k, v = self._heads(x)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=cache is None)
        return self._merge(y), (k, v)


class TransformerBlock(nn.Module):
    """Attention -> dropout -> residual -> LN, then FFN (GELU) -> dropout -> residual -> LN."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.w1 = nn.Linear(cfg.dim, cfg.inner_dim)
        self.w2 = nn.Linear(cfg.inner_dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def _ffn(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.drop(self.w2(F.gelu(self.w1(h)))) + h)

    def forward(self, x: torch.Tensor, cache=None):
        a, kv = self.attn(x, cache)
        return self._ffn(self.norm1(self.drop(a) + x)), kv


class SASRec(_TiedScores):
    """Self-attentive sequential recommendation over at most `max_len` items."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim)
        self.emb_norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.apply(_init_weights)

    def _embed(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.emb_drop(self.emb_norm(self.item_emb(items) + self.pos_emb(positions)))

    def forward(
        self, items: torch.Tensor, state: None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        """Hidden vectors (B,T,D) of right-padded rows; position t sees items 0..t only, so
        padding after a row's length never reaches its real positions."""
        if state is not None:
            raise ValueError("SASRec carries no state between windows; pass the items themselves")
        h, _ = self.prefill(items)
        return h, None

    def prefill(self, items: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Hidden vectors (B,T,D) of full rows and each block's keys/values (what `step` extends)."""
        T = items.shape[1]
        if T > self.cfg.max_len:
            raise ValueError(f"SASRec sees at most max_len={self.cfg.max_len} items, got {T}")
        h = self._embed(items, torch.arange(T, device=items.device))
        cache = []
        for block in self.blocks:
            h, kv = block(h)
            cache.append(kv)
        return h, cache

    def step(self, item: torch.Tensor, cache: list | None, position: int) -> tuple[torch.Tensor, list]:
        """Hidden vector (B,D) of the item at `position`, extending the per-block key/value
        cache of the items before it (None for the first item)."""
        if position >= self.cfg.max_len:
            raise ValueError(f"position {position} is past max_len={self.cfg.max_len}; re-encode the window")
        pos = torch.full_like(item, position).view(-1, 1)
        h = self._embed(item.view(-1, 1), pos)
        new_cache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, None if cache is None else cache[i])
            new_cache.append(kv)
        return h[:, 0], new_cache
