"""Our fused BD-LRU scan against the public kernels a user could reach for, on one GPU.

    python benchmarks/scan_peers.py --device cuda [--lengths 200 1000 4096] [--channels 128]
    python benchmarks/scan_peers.py --check-adapters     # CPU: the adapters' math only

Needs a CUDA GPU and the peers (benchmark-only, never imported by the package):
    pip install accelerated-scan flash-linear-attention
(a GPU machine without registry access needs their wheels carried with the run).

Every contender computes the same layer output h (B, T, C) from the same (x, r_pre, i_pre,
Lambda), forward and forward+backward, at C channels and B rows filling --elems elements:
  ours             recblr.kernels.bd_lru, backend triton: gates computed inside the kernel.
  accscan_triton   accelerated_scan.triton.scan, as the paper's code uses such a scan: gates
  accscan_warp     (a, b) in PyTorch, tokens b*x, (B, T, C) -> (B, C, T) transposes, T padded
                   to a power of two (gate 1, token 0: earlier outputs unchanged), sliced back.
                   `warp` is the package's CUDA C++ kernel (JIT-built: needs nvcc).
  fla_chunk_hgrn   flash-linear-attention's HGRN recurrence (fla.ops.hgrn chunk_hgrn /
  fla_recurrent_hgrn  fused_recurrent_hgrn): h_t = exp(g_t) h_{t-1} + x_t on (B, T, C), fed
                   g = log a and b*x computed in PyTorch.
  floor            the memory floor of benchmarks/scan.py (one elementwise op reading the
                   three inputs and writing h; backward: three products writing the gradients).
A contender whose package is missing is skipped with the install line in the JSON. Before
timing, every contender's output is compared with ours at a small shape (max |diff|).
Results: benchmarks/results/scan_peers.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import provenance, write_result  # noqa: E402
from scan import floor_calls, forward_backward_call, forward_call, timeit  # noqa: E402

from recblr.kernels import bd_lru  # noqa: E402
from recblr.kernels.reference import bd_lru_gates  # noqa: E402
from recblr.kernels.testing import make_inputs  # noqa: E402

INSTALL = "pip install accelerated-scan flash-linear-attention"
Scan = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ours(x, r_pre, i_pre, lam, backend: str = "triton") -> torch.Tensor:
    return bd_lru(x, r_pre, i_pre, lam, backend=backend)[0]


def via_accelerated_scan(scan: Scan) -> Callable:
    """The paper's route: gates in PyTorch, (B, C, T) layout, power-of-two length."""

    def run(x, r_pre, i_pre, lam):
        a, b = bd_lru_gates(r_pre, i_pre, lam)
        T = x.shape[1]
        pad = (1 << max(0, (T - 1).bit_length())) - T
        gates = F.pad(a.transpose(1, 2), (0, pad), value=1.0).contiguous()
        tokens = F.pad((b * x).transpose(1, 2), (0, pad)).contiguous()
        return scan(gates, tokens)[..., :T].transpose(1, 2)

    return run


def via_hgrn(hgrn: Callable) -> Callable:
    """fla's HGRN: h_t = exp(g_t) h_{t-1} + x_t, with g = log a (B, T, C)."""

    def run(x, r_pre, i_pre, lam):
        a, b = bd_lru_gates(r_pre, i_pre, lam)
        return hgrn((b * x).contiguous(), torch.log(a).contiguous())[0]

    return run


def peers() -> tuple[dict[str, Callable], dict[str, str]]:
    """The contenders whose packages import here, and why the others are skipped."""
    found: dict[str, Callable] = {"ours": ours}
    skipped: dict[str, str] = {}
    for name, module, attr, wrap in (
        ("accscan_triton", "accelerated_scan.triton", "scan", via_accelerated_scan),
        ("accscan_warp", "accelerated_scan.warp", "scan", via_accelerated_scan),
        ("fla_chunk_hgrn", "fla.ops.hgrn", "chunk_hgrn", via_hgrn),
        ("fla_recurrent_hgrn", "fla.ops.hgrn", "fused_recurrent_hgrn", via_hgrn),
    ):
        try:
            found[name] = wrap(getattr(importlib.import_module(module), attr))
        except Exception as e:  # a missing package, or a JIT build that fails on this machine
            skipped[name] = f"{type(e).__name__}: {e} (install: {INSTALL})"
    return found, skipped


def loop_scan(gates: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A plain loop over the last axis: x[t] = gate[t] x[t-1] + token[t] (adapter check only)."""
    out, h = torch.empty_like(tokens), torch.zeros_like(tokens[..., 0])
    for t in range(tokens.shape[-1]):
        h = gates[..., t] * h + tokens[..., t]
        out[..., t] = h
    return out


def loop_hgrn(x: torch.Tensor, g: torch.Tensor):
    """A plain loop of HGRN's recurrence on (B, T, C) (adapter check only)."""
    return loop_scan(g.exp().transpose(1, 2), x.transpose(1, 2)).transpose(1, 2), None


def check_adapters() -> dict:
    """The adapters' layout, padding and gate math against the reference scan, on CPU loops."""
    inp = make_inputs(3, 37, 16, with_h0=False)
    args = [inp[n].detach() for n in ("x", "r_pre", "i_pre", "lam")]
    want = ours(*args, backend="reference")
    got = {"accelerated_scan layout": via_accelerated_scan(loop_scan)(*args),
           "hgrn layout": via_hgrn(loop_hgrn)(*args)}  # fmt: skip
    return {k: float((v - want).abs().max()) for k, v in got.items()}


def bench(fns: dict[str, Callable], T: int, B: int, C: int, device, repeats: int) -> dict:
    inp = make_inputs(B, T, C, device=device, with_h0=False)
    args = [inp[n] for n in ("x", "r_pre", "i_pre", "lam")]
    grad = torch.randn_like(inp["x"])
    out = {}
    for name, f in fns.items():
        out[name] = {"fwd_s": timeit(forward_call(f, args), device, repeats),
                     "fwdbwd_s": timeit(forward_backward_call(f, args, grad), device, repeats)}  # fmt: skip
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward_backward_call(f, args, grad)()
        out[name]["fwdbwd_peak_extra_bytes"] = torch.cuda.max_memory_allocated(device) - base
    x, r, i = (inp[n].detach() for n in ("x", "r_pre", "i_pre"))
    fwd, bwd = floor_calls(x, r, i, grad)
    f_fwd, f_bwd = timeit(fwd, device, repeats), timeit(bwd, device, repeats)
    out["floor"] = {"fwd_s": f_fwd, "fwdbwd_s": f_fwd + f_bwd}
    for name in fns:
        out[name]["x_floor_fwd"] = out[name]["fwd_s"] / f_fwd
        out[name]["x_floor_fwdbwd"] = out[name]["fwdbwd_s"] / (f_fwd + f_bwd)
        out[name]["x_ours_fwdbwd"] = out[name]["fwdbwd_s"] / out["ours"]["fwdbwd_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--lengths", type=int, nargs="+", default=[200, 1000, 4096])
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--elems", type=int, default=1 << 27, help="B*T*C per length (B fills the GPU)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--check-adapters", action="store_true", help="CPU check of the adapters' math, no timing")
    p.add_argument("--name", default="scan_peers")
    a = p.parse_args()
    if a.check_adapters:
        print(json.dumps(check_adapters()))
        return
    if not a.device.startswith("cuda") or not torch.cuda.is_available():
        sys.exit(f"scan_peers.py compares GPU kernels and needs CUDA (--device {a.device}, "
                 f"torch.cuda.is_available() = {torch.cuda.is_available()}); run it on a GPU "
                 f"machine after `{INSTALL}`")  # fmt: skip
    device = torch.device(a.device)
    fns, skipped = peers()
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    small = make_inputs(4, 300, a.channels, device=device, with_h0=False)
    sargs = [small[n].detach() for n in ("x", "r_pre", "i_pre", "lam")]
    want = ours(*sargs)
    agreement = {name: float((f(*sargs) - want).abs().max()) for name, f in fns.items()}
    print("max |h - ours| at (4, 300, C):", agreement)
    rows = []
    for T in a.lengths:
        B = max(1, a.elems // (T * a.channels))
        times = bench(fns, T, B, a.channels, device, a.repeats)
        rows.append({"T": T, "B": B, "C": a.channels, "times": times})
        for name, t in times.items():
            extra = "" if name == "floor" else (f"  x floor {t['x_floor_fwd']:.2f}/{t['x_floor_fwdbwd']:.2f}"
                                                f"  x ours f+b {t['x_ours_fwdbwd']:.2f}")  # fmt: skip
            print(f"T={T:5d} B={B:6d} {name:18s} fwd {t['fwd_s'] * 1e3:8.3f} ms  f+b {t['fwdbwd_s'] * 1e3:8.3f} ms{extra}")
    versions = {}
    for pkg in ("accelerated_scan", "fla", "triton"):
        try:
            versions[pkg] = getattr(importlib.import_module(pkg), "__version__", "unknown")
        except Exception:
            versions[pkg] = None
    payload = {**provenance(), "gpu": torch.cuda.get_device_name(device), "versions": versions,
               "dtype": "float32", "timing": f"best of {a.repeats} after a warm-up, seconds",
               "skipped": skipped, "max_abs_diff_vs_ours": agreement, "results": rows}  # fmt: skip
    print(write_result(a.name, payload))


if __name__ == "__main__":
    main()
