"""The fused `cpu` backend and the recblr::bd_lru custom op, against the reference."""

import pytest
import torch

from recblr.kernels import bd_lru, cpu
from recblr.kernels.dispatch import bd_lru_op
from recblr.kernels.testing import compare, float32_tol, make_inputs, run, saved_bytes

# Normalised max error (max |got - ref| / max(1, max |ref|)) allowed per output.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
# a ~ 1 - 1e-4: q = sqrt(1 - a^2 + 1e-8) cancels, one ulp of a moves q by ~3e-4.
TOL_NEAR_ONE = 2e-3


@pytest.fixture(autouse=True, params=["native", "torch"])
def cpu_path(request, monkeypatch):
    """Every test here runs on both paths of the `cpu` backend: the C kernel and PyTorch."""
    if request.param == "native":
        monkeypatch.delenv(cpu.NATIVE_ENV, raising=False)
        if not cpu.native_available():
            pytest.skip(f"native kernel unavailable: {cpu.native_status()}")
    else:
        monkeypatch.setenv(cpu.NATIVE_ENV, "0")
    return request.param


# Lengths: 1, odd/even, exactly one block, several blocks with a ragged tail, >= 1000.
LENGTHS = [1, 2, 7, cpu.CHUNK_T, 3 * cpu.CHUNK_T + 5, 1003]


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_matches_reference(T, with_h0, dtype):
    inp = make_inputs(3, T, 5, dtype=dtype, with_h0=with_h0)
    tol = float32_tol(T) if dtype == torch.float32 else TOL[dtype]
    compare(run("cpu", inp), run("reference", inp), tol)


@pytest.mark.parametrize("regime", ["near_one", "near_zero"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_cpu_extreme_decay(regime, with_h0):
    inp = make_inputs(2, 5 * cpu.CHUNK_T + 3, 6, with_h0=with_h0, regime=regime)
    tol = TOL_NEAR_ONE if regime == "near_one" else TOL[torch.float32]
    compare(run("cpu", inp), run("reference", inp), tol)


def test_cpu_many_batch_blocks_and_model_layout():
    """B spans several (Bb, C) slabs; r_pre, i_pre are strided halves of one tensor."""
    C = 64
    B = 2 * (cpu.SLAB // C) + 3
    inp = make_inputs(B, 11, C, strided=True)
    assert not inp["r_pre"].is_contiguous()
    compare(run("cpu", inp), run("reference", inp), TOL[torch.float32])


@pytest.mark.parametrize("with_h0", [False, True])
def test_cpu_gradcheck_float64(with_h0):
    inp = make_inputs(2, cpu.CHUNK_T + 3, 3, dtype=torch.float64, with_h0=with_h0)
    args = [inp[n] for n in ("x", "r_pre", "i_pre", "lam", "h0")]
    assert torch.autograd.gradcheck(lambda *a: bd_lru(*a, backend="cpu")[0], args)


def test_cpu_comparison_can_fail():
    """A one-step-shifted state sequence is caught by the same comparison."""
    inp = make_inputs(2, 9, 4)
    got = run("cpu", inp)
    got["h"] = torch.roll(got["h"], 1, dims=1)
    with pytest.raises(AssertionError):
        compare(got, run("reference", inp), TOL[torch.float32])


def _layer_saved(backend, inp):
    def fn():
        bd_lru(inp["x"], inp["r_pre"], inp["i_pre"], inp["lam"], inp["h0"], backend=backend)

    return saved_bytes(fn)


def test_fused_saves_only_inputs_and_states():
    B, T, C = 4, 50, 16
    inp = make_inputs(B, T, C)
    inputs = sum(t.numel() * t.element_size() for t in inp.values() if t is not None)
    btc = B * T * C * 4
    total, _ = _layer_saved("cpu", inp)
    assert total <= inputs + btc, (total, inputs, btc)
    # ... and the unfused reference composition saves more (a check that can fail).
    ref_total, _ = _layer_saved("reference", inp)
    assert ref_total > inputs + btc


def test_opcheck():
    inp = make_inputs(2, 9, 4)
    args = (inp["x"], inp["r_pre"], inp["i_pre"], inp["lam"], inp["h0"], "cpu")
    torch.library.opcheck(bd_lru_op, args)
    args = (inp["x"], inp["r_pre"], inp["i_pre"], inp["lam"], None, "cpu")
    torch.library.opcheck(bd_lru_op, args)


def test_torch_compile_fullgraph_one_op():
    """Dynamo traces bd_lru (cpu backend) as one op, forward and backward, no graph break."""
    inp = make_inputs(2, 10, 4)

    def f(x, r_pre, i_pre, lam, h0):
        h, h_last = bd_lru(x, r_pre, i_pre, lam, h0, backend="cpu")
        return h.sum() + 2 * h_last.sum()

    args = [inp[n] for n in ("x", "r_pre", "i_pre", "lam", "h0")]
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*args), args)
    want = torch.autograd.grad(f(*args), args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
