"""The Triton kernels against the reference. Without CUDA they run in Triton's interpreter.

TRITON_INTERPRET must be in the environment before Triton decorates the kernels (when
`recblr.kernels.triton_scan` is first imported), so it is set here, at collection time,
when no GPU is present. Shapes stay small: the interpreter runs each program in Python.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from recblr.kernels import triton_scan  # noqa: E402
from recblr.kernels.testing import compare, make_inputs, run, saved_bytes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton.knobs.runtime.interpret:
    pytest.skip("Triton kernels were imported without TRITON_INTERPRET", allow_module_level=True)

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
TOL_NEAR_ONE = 2e-3
# Over >= 1000 steps with a up to 0.999, float32 rounding differences (Triton's exp/sigmoid
# vs PyTorch's) accumulate to a few 1e-5.
TOL_LONG = 1e-4
CH = triton_scan.CHUNK_T


def _check(B, T, C, dtype=torch.float32, with_h0=True, regime="normal", strided=False):
    inp = make_inputs(B, T, C, dtype=dtype, with_h0=with_h0, regime=regime, device=DEVICE,
                      strided=strided)  # fmt: skip
    tol = TOL_NEAR_ONE if regime == "near_one" else TOL[dtype]
    if T >= 1000:
        tol = max(tol, TOL_LONG)
    return compare(run("triton", inp), run("reference", inp), tol)


@pytest.mark.parametrize("T", [1, 2, 7, CH, 2 * CH + 3])
@pytest.mark.parametrize("with_h0", [False, True])
def test_triton_matches_reference(T, with_h0):
    # One full channel block and a ragged one.
    _check(2, T, triton_scan.MAX_BLOCK_C + 5, with_h0=with_h0)


@pytest.mark.parametrize("C", [3, 40, 100])
def test_triton_narrower_blocks(C):
    # 32-, 64- and 128-channel programs, each with masked lanes.
    _check(2, CH + 3, C)


def test_launch_config_one_thread_per_channel_up_to_four_warps():
    cfg = triton_scan.launch_config
    assert [cfg(c) for c in (1, 32, 33, 64, 100, 128, 129, 4096)] == [
        (32, 1),
        (32, 1),
        (64, 2),
        (64, 2),
        (128, 4),
        (128, 4),
        (128, 4),
        (128, 4),
    ]


@pytest.mark.parametrize("T", [1, 2 * CH + 3])
def test_triton_bfloat16(T):
    _check(2, T, 6, dtype=torch.bfloat16)


def test_triton_long_sequence():
    _check(1, 1001, 3, with_h0=True)


@pytest.mark.parametrize("regime", ["near_one", "near_zero"])
def test_triton_extreme_decay(regime):
    _check(1, 4 * CH + 1, 5, regime=regime)


def test_triton_model_layout_strided_halves():
    _check(2, CH + 1, 8, strided=True)


def test_triton_saves_only_inputs_and_states():
    B, T, C = 2, 9, 8
    inp = make_inputs(B, T, C, device=DEVICE)
    inputs = sum(t.numel() * t.element_size() for t in inp.values() if t is not None)
    from recblr.kernels import bd_lru

    args = [inp[n] for n in ("x", "r_pre", "i_pre", "lam", "h0")]
    total, _ = saved_bytes(lambda: bd_lru(*args, backend="triton"))
    assert total <= inputs + B * T * C * 4


def test_dispatch_uses_triton_when_forced(monkeypatch):
    from recblr.kernels import ENV_VAR, get_backend

    monkeypatch.setenv(ENV_VAR, "triton")
    assert get_backend(DEVICE) == "triton"
