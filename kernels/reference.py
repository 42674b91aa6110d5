"""Pure-PyTorch BD-LRU scan: the oracle every other backend is tested against.

Kept deliberately plain: the gates are ordinary PyTorch ops (autograd differentiates them)
and the recurrence is a sequential loop with a hand-written reverse-scan backward, so the
graph never holds T per-step nodes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Inside the square root of b = sqrt(1 - a^2 + EPS) * i (value from the authors' code).
EPS = 1e-8


class _LinearScan(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + u_t over dim 1 of (B, T, C) tensors, h_0 given."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor):
        hs = torch.empty_like(u)
        h = h0
        for t in range(u.shape[1]):
            h = a[:, t] * h + u[:, t]
            hs[:, t] = h
        ctx.save_for_backward(a, hs, h0)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: torch.Tensor):
        a, hs, h0 = ctx.saved_tensors
        T = a.shape[1]
        grad_u = torch.empty_like(grad_hs)
        g = torch.zeros_like(h0)
        for t in range(T - 1, -1, -1):
            g = grad_hs[:, t] + g
            grad_u[:, t] = g
            g = g * a[:, t]
        # g now holds dL/dh0; dL/da_t = dL/dh_t * h_{t-1}.
        h_prev = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1)
        grad_a = grad_u * h_prev
        return grad_a, grad_u, g


def linear_scan(a: torch.Tensor, u: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """All states of h_t = a_t * h_{t-1} + u_t for (B, T, C) inputs; h0 defaults to zeros."""
    if h0 is None:
        h0 = a.new_zeros(a.shape[0], a.shape[2])
    return _LinearScan.apply(a, u, h0)


def bd_lru_gates(
    r_pre: torch.Tensor, i_pre: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's (a, sqrt(1 - a^2 + eps) * i) from the gate pre-activations."""
    a = torch.exp(-F.softplus(lam) * torch.sigmoid(r_pre))
    b = torch.sqrt(1 - a * a + EPS) * torch.sigmoid(i_pre)
    return a, b


def bd_lru(
    x: torch.Tensor,
    r_pre: torch.Tensor,
    i_pre: torch.Tensor,
    lam: torch.Tensor,
    h0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-LRU over (B, T, C) inputs: returns (every h_t, the last h).

    Arithmetic in float32 (float64 for float64 inputs); the states take x's dtype.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    a, b = bd_lru_gates(r_pre.to(acc), i_pre.to(acc), lam.to(acc))
    h0f = None if h0 is None else h0.to(acc)
    hs = linear_scan(a, b * x.to(acc), h0f)
    hs = hs.to(x.dtype)
    return hs, hs[:, -1]
