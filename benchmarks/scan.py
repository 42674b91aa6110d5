"""BD-LRU scan benchmark: every available backend against a serial loop and the memory floor.

    python benchmarks/scan.py                 # CPU (this machine), writes benchmarks/results/scan.json
    python benchmarks/scan.py --device cuda   # GPU: adds the triton backend

For each T in --lengths, with C channels and B = BC // C rows (B*C ~ 2^18), times the forward
(inputs requiring grad, as in training) and forward+backward of each backend, and reports two
ratios measured in the same run:
  loop:  the paper's "serial scan" -- gates in PyTorch, then a Python loop over t with autograd
         through every step;
  floor: the memory-bound floor -- one elementwise PyTorch op reading the same inputs and
         writing the same output (torch.addcmul(x, r_pre, i_pre, out=h)); for forward+backward,
         that op plus three elementwise products that read the backward's inputs (dL/dh, x,
         r_pre, i_pre, h) and write the three (B, T, C) gradients. Outputs are preallocated.
  floor_alloc: the same ops returning fresh tensors, as every backend must: for large
         tensors glibc maps new pages per call and the kernel zeroes them on first touch,
         which on a 1-thread CPU costs as much as the op itself (THP_MEM_ALLOC_ENABLE=1 or a
         higher MALLOC_MMAP_THRESHOLD_ removes most of it; recorded in meta.env).
On CPU the `cpu` backend is timed twice: its compiled C kernel ("cpu") and its PyTorch
fallback ("cpu-torch", RECBLR_CPU_NATIVE=0), so both paths are compared in one run.
Also reports the bytes one layer saves for backward, fused (cpu backend) vs unfused (the
reference: gates in PyTorch, then the scan).

When B*T*C would exceed --max-elems (default 2^24 on CPU: 64 MB per float32 tensor, and the
serial loop keeps ~10 of them for its backward), B is reduced for that T and the JSON records
it. The serial loop is the slowest thing timed: for T >= 1000 it runs once without a warm-up
(--loop-repeats), and the JSON records its repeats.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recblr.kernels import available_backends
from recblr.kernels.testing import make_inputs, saved_bytes

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("x", "r_pre", "i_pre", "lam", "h0")
ENV_RECORDED = ("OMP_NUM_THREADS", "RECBLR_CPU_NATIVE", "THP_MEM_ALLOC_ENABLE",
                "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # fmt: skip


def serial_loop(x, r_pre, i_pre, lam, h0=None):
    """The paper's serial scan: autograd through a Python loop over t."""
    a = torch.exp(-F.softplus(lam) * torch.sigmoid(r_pre))
    b = torch.sqrt(1 - a * a + 1e-8) * torch.sigmoid(i_pre)
    u = b * x
    h = torch.zeros_like(x[:, 0]) if h0 is None else h0
    hs = []
    for t in range(x.shape[1]):
        h = a[:, t] * h + u[:, t]
        hs.append(h)
    return torch.stack(hs, dim=1)


def forward_call(f, args):
    return lambda: f(*args)


def forward_backward_call(f, args, grad):
    """f's forward and backward for dL/dh = grad; clears the inputs' grads after each call."""

    def call():
        torch.autograd.backward(f(*args), grad)
        for t in args:
            if t is not None:
                t.grad = None

    return call


def floor_calls(x, r_pre, i_pre, grad):
    """The memory floor, into preallocated outputs: (forward, backward) calls.

    Forward: one elementwise op reading the scan's three (B, T, C) inputs and writing one.
    Backward: three elementwise products reading what the scan's backward reads (dL/dh, x,
    r_pre, i_pre, h) and writing its three (B, T, C) gradients.
    """
    h, d1, d2, d3 = (torch.empty_like(x) for _ in range(4))

    def forward():
        torch.addcmul(x, r_pre, i_pre, out=h)

    def backward():
        torch.mul(grad, x, out=d1)
        torch.mul(r_pre, i_pre, out=d2)
        torch.mul(h, grad, out=d3)

    return forward, backward


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device, repeats, warmup=True):
    if warmup:
        fn()  # warm-up (and Triton compile)
        _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class _env:
    """Set environment variables for the duration of a block."""

    def __init__(self, **values):
        self.values, self.old = values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.old[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_one(T, B, C, device, backends, repeats, loop_repeats):
    inp = make_inputs(B, T, C, device=device, with_h0=False)
    args = [inp[n] for n in NAMES]
    x, r, i = inp["x"].detach(), inp["r_pre"].detach(), inp["i_pre"].detach()
    grad = torch.randn_like(x)
    from recblr.kernels import bd_lru

    fns = {name: (lambda *a, _n=name: bd_lru(*a, backend=_n)[0]) for name in backends}
    envs = {name: {} for name in backends}
    if device.type == "cpu" and "cpu" in backends:
        fns["cpu-torch"] = fns["cpu"]
        envs["cpu-torch"] = {"RECBLR_CPU_NATIVE": "0"}
    fns["loop"] = serial_loop
    envs["loop"] = {}
    out = {}
    for name, f in fns.items():
        reps = loop_repeats if name == "loop" else repeats
        warm = name != "loop" or reps > 1
        with _env(**envs[name]):
            out[name] = {
                "fwd_s": timeit(forward_call(f, args), device, reps, warmup=warm),
                "fwdbwd_s": timeit(forward_backward_call(f, args, grad), device, reps, warmup=warm),
            }
        if name == "loop":
            out[name]["repeats"] = reps
            out[name]["warmup"] = warm
    floor_fwd, floor_bwd = floor_calls(x, r, i, grad)
    h = torch.addcmul(x, r, i)  # real values for the allocating backward floor to read

    def floor_fwd_alloc():
        return torch.addcmul(x, r, i)

    def floor_bwd_alloc():
        return torch.mul(grad, x), torch.mul(r, i), torch.mul(h, grad)

    f_fwd = timeit(floor_fwd, device, repeats)
    f_bwd = timeit(floor_bwd, device, repeats)
    out["floor"] = {"fwd_s": f_fwd, "fwdbwd_s": f_fwd + f_bwd}
    fa_fwd = timeit(floor_fwd_alloc, device, repeats)
    fa_bwd = timeit(floor_bwd_alloc, device, repeats)
    out["floor_alloc"] = {"fwd_s": fa_fwd, "fwdbwd_s": fa_fwd + fa_bwd}
    ratios = {}
    for name in fns:
        if name == "loop":
            continue
        t, lp, fl, fa = out[name], out["loop"], out["floor"], out["floor_alloc"]
        ratios[name] = {
            "speedup_vs_loop_fwd": lp["fwd_s"] / t["fwd_s"],
            "speedup_vs_loop_fwdbwd": lp["fwdbwd_s"] / t["fwdbwd_s"],
            "x_floor_fwd": t["fwd_s"] / fl["fwd_s"],
            "x_floor_fwdbwd": t["fwdbwd_s"] / fl["fwdbwd_s"],
            "x_floor_alloc_fwd": t["fwd_s"] / fa["fwd_s"],
            "x_floor_alloc_fwdbwd": t["fwdbwd_s"] / fa["fwdbwd_s"],
        }
    return out, ratios


def saved_ratio(device, fused):
    B, T, C = 16, 200, 128
    inp = make_inputs(B, T, C, device=device, with_h0=False)
    args = [inp[n] for n in NAMES]
    from recblr.kernels import bd_lru

    f_total, _ = saved_bytes(lambda: bd_lru(*args, backend=fused))
    u_total, _ = saved_bytes(lambda: bd_lru(*args, backend="reference"))
    btc = B * T * C * 4
    return {
        "shape": [B, T, C],
        "fused_backend": fused,
        "fused_bytes": f_total,
        "unfused_bytes": u_total,
        "fused_in_BTC_tensors": f_total / btc,
        "unfused_in_BTC_tensors": u_total / btc,
        "unfused_over_fused": u_total / f_total,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000, 4096])
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--bc", type=int, default=1 << 18, help="B*C per length (default 2^18)")
    p.add_argument("--max-elems", type=int, default=None,
                   help="cap on B*T*C (default 2^24 on cpu, 2^29 on cuda)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loop-repeats", type=int, default=None,
                   help="repeats of the serial loop (default: --repeats for T < 1000, else 1)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads for every backend (default 1 on cpu: steadier "
                        "ratios on a shared machine, and the same for all backends)")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scan.json"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    threads = a.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    max_elems = a.max_elems or (1 << 24 if device.type == "cpu" else 1 << 29)
    backends = available_backends(device)
    skipped = {}
    if device.type == "cpu":
        if "triton" in backends:
            backends.remove("triton")
        skipped["triton"] = (
            "not benchmarked on CPU: Triton runs CPU tensors only in its Python interpreter "
            "(TRITON_INTERPRET=1), which is orders of magnitude slower; run --device cuda"
        )
    C = a.channels
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git_commit(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "env_RECBLR_SCAN_BACKEND": os.environ.get("RECBLR_SCAN_BACKEND"),
        "dtype": "float32",
        "timing": f"best of {a.repeats} after one warm-up, seconds",
        "load_average_at_start": os.getloadavg(),
        "max_elems": max_elems,
        "env": {k: os.environ.get(k) for k in ENV_RECORDED},
    }
    if device.type == "cpu":
        from recblr.kernels import cpu as cpu_kernels

        meta["cpu_backend"] = cpu_kernels.native_status()
        built = cpu_kernels._native["built"]
        meta["cpu_native_flags"] = list(built.flags) if built is not None else None
    try:
        import triton

        meta["triton"] = triton.__version__
        if device.type == "cuda":
            from recblr.kernels import triton_scan

            block, warps = triton_scan.launch_config(a.channels)
            meta["triton_config"] = {
                "BLOCK_C": block,
                "CHUNK_T": triton_scan.CHUNK_T,
                "NUM_WARPS": warps,
            }
    except ImportError:
        meta["triton"] = None
    results = []
    print(f"{meta['device']} | torch {meta['torch']} | backends {backends}")
    hdr = (f"{'T':>5} {'B':>5} {'backend':>9} {'fwd ms':>9} {'f+b ms':>9} {'vs loop f':>9} "
           f"{'vs loop f+b':>11} {'x floor f':>9} {'x floor f+b':>11} {'x alloc f':>9} "
           f"{'x alloc f+b':>11}")  # fmt: skip
    print(hdr)
    for T in a.lengths:
        B = max(1, a.bc // C)
        note = None
        if B * T * C > max_elems:
            B = max(1, max_elems // (T * C))
            note = f"B reduced from {a.bc // C} to {B} (B*T*C capped at {max_elems} for memory)"
        loop_repeats = a.loop_repeats or (a.repeats if T < 1000 else 1)
        times, ratios = bench_one(T, B, C, device, backends, a.repeats, loop_repeats)
        results.append({"T": T, "B": B, "C": C, "BC": B * C, "note": note,
                        "times": times, "ratios": ratios})  # fmt: skip
        for name in times:
            r = ratios.get(name, {})
            nan = float("nan")
            print(
                f"{T:>5} {B:>5} {name:>9} {times[name]['fwd_s'] * 1e3:>9.2f} "
                f"{times[name]['fwdbwd_s'] * 1e3:>9.2f} "
                f"{r.get('speedup_vs_loop_fwd', nan):>9.1f} "
                f"{r.get('speedup_vs_loop_fwdbwd', nan):>11.1f} "
                f"{r.get('x_floor_fwd', nan):>9.2f} "
                f"{r.get('x_floor_fwdbwd', nan):>11.2f} "
                f"{r.get('x_floor_alloc_fwd', nan):>9.2f} "
                f"{r.get('x_floor_alloc_fwdbwd', nan):>11.2f}",
                flush=True,
            )
        if note:
            print(f"      ({note})")
    fused = "triton" if "triton" in backends else "cpu"
    mem = saved_ratio(device, fused)
    print(
        f"saved for backward, one layer {mem['shape']}: fused ({fused}) "
        f"{mem['fused_in_BTC_tensors']:.2f} x BTC, unfused {mem['unfused_in_BTC_tensors']:.2f} "
        f"x BTC -> unfused/fused = {mem['unfused_over_fused']:.2f}"
    )
    meta["load_average_at_end"] = os.getloadavg()
    report = {"meta": meta, "skipped": skipped, "results": results, "saved_for_backward": mem}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
