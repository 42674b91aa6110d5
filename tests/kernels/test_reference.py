"""The oracle itself: against a naive sequential loop with plain autograd, and gradcheck."""

import pytest
import torch
import torch.nn.functional as F

from recblr.kernels import reference
from recblr.kernels.testing import compare, make_inputs


def naive_bd_lru(x, r_pre, i_pre, lam, h0=None):
    """The spec, line by line: a Python loop over t, autograd through every step."""
    B, T, C = x.shape
    h = x.new_zeros(B, C) if h0 is None else h0
    hs = []
    for t in range(T):
        a = torch.exp(-F.softplus(lam) * torch.sigmoid(r_pre[:, t]))
        b = torch.sqrt(1 - a**2 + 1e-8) * torch.sigmoid(i_pre[:, t])
        h = a * h + b * x[:, t]
        hs.append(h)
    hs = torch.stack(hs, dim=1)
    return hs, hs[:, -1]


def _grads(fn, inp):
    names = [n for n in ("x", "r_pre", "i_pre", "lam", "h0") if inp[n] is not None]
    h, h_last = fn(*(inp[n] for n in ("x", "r_pre", "i_pre", "lam", "h0")))
    g = torch.Generator().manual_seed(3)
    loss = (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum() + h_last.sum()
    out = dict(zip(names, torch.autograd.grad(loss, [inp[n] for n in names]), strict=True))
    out["h"] = h.detach()
    return out


@pytest.mark.parametrize("T", [1, 2, 7, 64])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("regime", ["normal", "near_one", "near_zero"])
def test_reference_matches_naive_loop(T, with_h0, regime):
    inp = make_inputs(3, T, 5, dtype=torch.float64, with_h0=with_h0, regime=regime)
    compare(_grads(reference.bd_lru, inp), _grads(naive_bd_lru, inp), tol=1e-10)


@pytest.mark.parametrize("with_h0", [False, True])
def test_reference_gradcheck_float64(with_h0):
    inp = make_inputs(2, 6, 3, dtype=torch.float64, with_h0=with_h0)
    args = [inp[n] for n in ("x", "r_pre", "i_pre", "lam", "h0")]
    assert torch.autograd.gradcheck(lambda *a: reference.bd_lru(*a)[0], args)


def test_linear_scan_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 9, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    u = torch.randn(2, 9, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(reference.linear_scan, (a, u, h0))


def test_naive_loop_is_a_real_check():
    """The comparison catches a wrong recurrence (here: the 1e-8 dropped from the root)."""
    inp = make_inputs(2, 5, 4, dtype=torch.float64, regime="near_one")

    def wrong(x, r_pre, i_pre, lam, h0=None):
        a = torch.exp(-F.softplus(lam) * torch.sigmoid(r_pre))
        b = torch.sqrt(1 - a**2) * torch.sigmoid(i_pre) * 1.001
        hs = reference.linear_scan(a, b * x, h0)
        return hs, hs[:, -1]

    with pytest.raises(AssertionError):
        compare(_grads(wrong, inp), _grads(naive_bd_lru, inp), tol=1e-10)
