"""Launch configurations of the Triton BD-LRU kernels: each checked, then timed against the floor.

    python benchmarks/triton_configs.py      # needs CUDA; writes benchmarks/results/triton_configs.json

For every (channels per program, warps, CHUNK_T) in CONFIGS: values and all gradients against
the reference on three small shapes (ragged channel blocks, T >= 1000, a close to 1), then the
forward and forward+backward at B=2048, C=128, T in {200, 1000}, each as a ratio to the memory
floor of scan.py (one elementwise op reading the same inputs and writing the same outputs),
timed in the same run with `triton.testing.do_bench` (median). The kernels' default,
`triton_scan.launch_config`, follows the best row (H200: 128 channels, 4 warps, CHUNK_T 8).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import provenance, write_result  # noqa: E402
from scan import NAMES, floor_calls, forward_backward_call, forward_call  # noqa: E402

from recblr.kernels import bd_lru  # noqa: E402
from recblr.kernels import triton_scan as ts  # noqa: E402
from recblr.kernels.testing import compare, make_inputs, run  # noqa: E402

# (channels per program, warps per program, time steps per unrolled chunk)
CONFIGS = [(32, 1, 8), (32, 1, 16), (32, 1, 32), (64, 2, 8), (64, 2, 16),
           (128, 4, 8), (128, 4, 16), (128, 4, 32)]  # fmt: skip
CHECKS = [
    (3, 37, 200, True, "normal"),
    (2, 1001, 128, False, "near_one"),
    (2, 70, 37, True, "normal"),
]
B, C, LENGTHS = 2048, 128, (200, 1000)


def triton_h(*args):
    return bd_lru(*args, backend="triton")[0]


def floors(T: int):
    """Inputs for the timed shape and the floor times (forward, forward+backward) in ms."""
    from triton.testing import do_bench

    inp = make_inputs(B, T, C, device="cuda", with_h0=False)
    args = [inp[n] for n in NAMES]
    x, r, i = (inp[n].detach() for n in ("x", "r_pre", "i_pre"))
    g = torch.randn_like(x)
    fwd, bwd = floor_calls(x, r, i, g)
    f = do_bench(fwd, return_mode="median")
    return args, g, f, f + do_bench(bwd, return_mode="median")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    if not torch.cuda.is_available():
        sys.exit("triton_configs.py needs a CUDA device")
    from triton.testing import do_bench

    timed = {T: floors(T) for T in LENGTHS}
    default_config, default_chunk = ts.launch_config, ts.CHUNK_T
    rows = []
    for block, warps, chunk in CONFIGS:
        ts.launch_config = lambda _c, _b=block, _w=warps: (_b, _w)
        ts.CHUNK_T = chunk
        errs = []
        for b_, t_, c_, h0, regime in CHECKS:
            inp = make_inputs(b_, t_, c_, device="cuda", with_h0=h0, regime=regime, seed=t_)
            tol = 2e-3 if regime == "near_one" else 1e-4
            errs.append(max(compare(run("triton", inp), run("reference", inp), tol).values()))
        row = {"BLOCK_C": block, "NUM_WARPS": warps, "CHUNK_T": chunk, "max_err": max(errs)}
        for T, (args, g, f_floor, fb_floor) in timed.items():
            fwd, fwdbwd = forward_call(triton_h, args), forward_backward_call(triton_h, args, g)
            row[f"T{T}_fwd_x_floor"] = do_bench(fwd, return_mode="median") / f_floor
            row[f"T{T}_fwdbwd_x_floor"] = do_bench(fwdbwd, return_mode="median") / fb_floor
        rows.append(row)
        print(row, flush=True)
    ts.launch_config, ts.CHUNK_T = default_config, default_chunk
    best = min(rows, key=lambda r: sum(v for k, v in r.items() if k.endswith("_x_floor")))
    print("best", best)
    payload = {**provenance(), "device": torch.cuda.get_device_name(), "shape": f"B={B} C={C}",
               "timing": "triton.testing.do_bench median", "configs": rows, "best": best}  # fmt: skip
    print(write_result("triton_configs", payload))


if __name__ == "__main__":
    main()
