"""Training throughput on ML-100K: (prefix, next item) pairs per second and peak memory of

  (a) whole-sequence training, reference scan (custom reverse-scan backward)
  (a') the same with the dispatched fused scan (what `recblr train` uses on this device)
  (b) whole-sequence training, autograd through a plain sequential loop of T steps
  (c) prefix-per-example training as in the paper's reference code

Each variant runs in its own subprocess (so peak RSS is its own); ratios are against (a).

    python benchmarks/train_throughput.py [--steps 8] [--prefix-steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "a_sequence_reference": ("sequence", "reference"),
    "a2_sequence_fused": ("sequence", None),
    "b_sequence_autograd_loop": ("sequence", "loop"),
    "c_prefix_per_example": ("prefix", None),
}


def loop_bd_lru(x, r_pre, i_pre, lam, h0=None):
    """The serial baseline: gates then a Python loop, differentiated by autograd step by step."""
    import torch
    import torch.nn.functional as F

    a = torch.exp(-F.softplus(lam) * torch.sigmoid(r_pre))
    b = torch.sqrt(1 - a * a + 1e-8) * torch.sigmoid(i_pre) * x
    h = torch.zeros_like(x[:, 0]) if h0 is None else h0
    hs = []
    for t in range(x.shape[1]):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    hs = torch.stack(hs, dim=1)
    return hs, hs[:, -1]


def run_variant(name: str, steps: int) -> dict:
    import numpy as np
    import torch

    mode, scan = VARIANTS[name]
    if scan == "reference":
        os.environ["RECBLR_SCAN_BACKEND"] = "reference"
    import recblr.model
    from recblr.config import ModelConfig, TrainConfig
    from recblr.data import load_dataset
    from recblr.losses import make_loss
    from recblr.model import RecBLR
    from recblr.train import epoch_batches, train_epoch

    if scan == "loop":
        recblr.model.bd_lru = loop_bd_lru
    data = load_dataset("ml-100k")
    torch.manual_seed(0)
    model = RecBLR(ModelConfig(n_items=data.n_items))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = TrainConfig(example_mode=mode)
    batches = epoch_batches(data.train_sequences(), cfg, np.random.default_rng(0))
    cpu = torch.device("cpu")
    loss_fn = make_loss("ce", model.item_emb)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    train_epoch(model, opt, batches[:1], loss_fn, cpu)  # the first step warms up allocators and caches
    t0 = time.perf_counter()
    _, pairs = train_epoch(model, opt, batches[1 : steps + 1], loss_fn, cpu)
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds,
            "peak_rss_mib": rss1 / 1024, "train_rss_growth_mib": (rss1 - rss0) / 1024}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prefix-steps", type=int, default=3)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        steps = args.prefix_steps if args.variant.startswith("c_") else args.steps
        print(json.dumps(run_variant(args.variant, steps)))
        return
    from _common import provenance, write_result

    results = {}
    for name in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", name, "--steps", str(args.steps),
                              "--prefix-steps", str(args.prefix_steps)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr}")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, {k: round(v, 2) for k, v in results[name].items()}, flush=True)
    base = results["a_sequence_reference"]
    ratios = {
        name: {"throughput_vs_a": r["pairs_per_s"] / base["pairs_per_s"],
               "peak_rss_vs_a": r["peak_rss_mib"] / base["peak_rss_mib"]}
        for name, r in results.items()
    }
    payload = {**provenance(), "dataset": "ml-100k", "batch_pairs": 2048, "max_len": 200,
               "results": results, "ratios": ratios}
    print(write_result("train_throughput", payload))
    for name, r in ratios.items():
        print(f"{name:28s} throughput x{r['throughput_vs_a']:.3f}  peak RSS x{r['peak_rss_vs_a']:.2f}")


if __name__ == "__main__":
    main()
