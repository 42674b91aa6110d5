"""Helpers shared by the kernel tests and `benchmarks/scan.py` (no test framework needed)."""

from __future__ import annotations

import math

import torch

from recblr.kernels.dispatch import bd_lru


def make_inputs(
    B: int,
    T: int,
    C: int,
    *,
    dtype: torch.dtype = torch.float32,
    with_h0: bool = True,
    regime: str = "normal",
    device: str | torch.device = "cpu",
    seed: int = 0,
    strided: bool = False,
) -> dict:
    """Leaf tensors x, r_pre, i_pre, lam, h0 (None when not with_h0), requiring grad.

    regime: "normal" (the spec's init: exp(-softplus(lam)) in [0.9, 0.999]),
            "near_one" (a ~ 1 - 1e-4: small softplus(lam)), "near_zero" (large lam and r_pre).
    strided: r_pre and i_pre are the two halves of one (B, T, 2C) tensor, as in the model.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    x = rnd(B, T, C)
    if regime == "normal":
        lo, hi = -math.log(0.9), -math.log(0.999)
        lam = torch.log(torch.expm1(torch.linspace(lo, hi, C)))  # softplus^-1
        ri = rnd(B, T, 2 * C)
    elif regime == "near_one":
        lam = torch.full((C,), math.log(math.expm1(2e-4))) + rnd(C, scale=0.1)
        ri = rnd(B, T, 2 * C)
    elif regime == "near_zero":
        lam = rnd(C, shift=12.0)
        ri = torch.cat([rnd(B, T, C, shift=6.0), rnd(B, T, C)], dim=-1)
    else:
        raise ValueError(regime)
    ri = ri.to(device=device, dtype=dtype)
    if strided:
        r_pre, i_pre = ri.detach().requires_grad_(True).split(C, dim=-1)
        leaves = [r_pre, i_pre]  # non-leaf views: gradients are read with autograd.grad
    else:
        r_pre = ri[..., :C].contiguous().requires_grad_(True)
        i_pre = ri[..., C:].contiguous().requires_grad_(True)
        leaves = [r_pre, i_pre]
    out = {
        "x": x.to(device=device, dtype=dtype).requires_grad_(True),
        "r_pre": leaves[0],
        "i_pre": leaves[1],
        "lam": lam.to(device=device, dtype=dtype).requires_grad_(True),
        "h0": rnd(B, C).to(device=device, dtype=dtype).requires_grad_(True) if with_h0 else None,
    }
    return out


NAMES = ("h", "x", "r_pre", "i_pre", "lam", "h0")


def run(backend: str, inp: dict, seed: int = 1) -> dict:
    """h and the gradients of a fixed random projection of (h, h_last) for every input."""
    h, h_last = bd_lru(inp["x"], inp["r_pre"], inp["i_pre"], inp["lam"], inp["h0"], backend=backend)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h.shape, generator=g).to(h.device, torch.float32)
    w_last = torch.randn(h_last.shape, generator=g).to(h.device, torch.float32)
    loss = (h.float() * w).sum() + (h_last.float() * w_last).sum()
    names = [n for n in NAMES[1:] if inp[n] is not None]
    grads = torch.autograd.grad(loss, [inp[n] for n in names])
    out = {"h": h.detach()}
    out.update({n: gr for n, gr in zip(names, grads, strict=True)})
    return out


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max(1, max |want|), in float64."""
    got, want = got.double(), want.double()
    return ((got - want).abs().max() / want.abs().max().clamp_min(1.0)).item()


def float32_tol(T: int, base: float = 2e-5) -> float:
    """Tolerance between two float32 scans of length T (two kernels, or a kernel and PyTorch).

    Their rounding differs step by step (another exp, another vector width) and the reverse
    scan sums the differences over T, so the gap grows like sqrt(T). A fixed 2e-5 held on the
    AMD CI machine, but the C kernel built on the GPU machine's Intel Xeon gave 2.1e-5 at
    T=200 and 4.7e-5 at T=1003 in the gradients.
    """
    return base * max(1.0, math.sqrt(T / 50))


def compare(got: dict, want: dict, tol: float) -> dict:
    """Errors per output; raises AssertionError naming every output above tol."""
    errs = {k: max_rel_err(got[k], want[k]) for k in want}
    bad = {k: e for k, e in errs.items() if not e <= tol}
    if set(got) != set(want):
        raise AssertionError(f"outputs differ: {sorted(got)} vs {sorted(want)}")
    if bad:
        raise AssertionError(f"above tolerance {tol}: {bad} (all: {errs})")
    return errs


def saved_bytes(fn) -> tuple[int, int]:
    """(total, unique-storage) bytes that autograd saves for backward while fn() runs."""
    seen: dict = {}
    total = 0

    def pack(t):
        nonlocal total
        n = t.numel() * t.element_size()
        total += n
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape, t.dtype)] = n
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total, sum(seen.values())
