"""Batch scoring throughput (users/s) on ML-100K histories: ONNX cell vs PyTorch full forward.

    python benchmarks/score.py [--repeats 3] [--dim 64] [--out benchmarks/results/score.json]

Every user's full history (all interactions, up to ~700 items) is scored to top-20, on the CPU:
- cell:        recblr.runtime batch path (users of a chunk stepped together, every step through
               the one cell session), chunk 1024
- torch:       RecBLR.last_hidden + item_scores + topk, users sorted by length, batches of 256
Same weights (a random model at the default sizes; speed does not depend on training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

K = 20


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--torch-batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/results/score.json")
    args = ap.parse_args()

    import torch

    from recblr.config import ModelConfig
    from recblr.data import load_dataset
    from recblr.export.onnx_export import export_cell
    from recblr.model import RecBLR
    from recblr.runtime.engine import Engine
    from recblr.runtime.store import MemoryStore

    data = load_dataset("ml-100k")
    hist = [np.asarray(s, dtype=np.int64) for s in data.sequences]
    n_users, n_events = len(hist), int(sum(len(h) for h in hist))
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=data.n_items, dim=args.dim)
    model = RecBLR(cfg).eval()
    tmp = Path(tempfile.mkdtemp())
    cell = export_cell(model, tmp / "cell.onnx", top_k=K, item_ids=data.item_ids)
    engine = Engine(cell, providers="cpu", store=MemoryStore(1))

    def run_cell():
        out = []
        for i in range(0, n_users, args.chunk):
            out.append(engine.encode_histories([h.tolist() for h in hist[i : i + args.chunk]])[1])
        return np.concatenate(out)

    order = np.argsort([-len(h) for h in hist], kind="stable")

    def run_torch():
        res = np.zeros((n_users, K), np.int64)
        with torch.inference_mode():
            for i in range(0, n_users, args.torch_batch):
                idx = order[i : i + args.torch_batch]
                L = torch.tensor([len(hist[j]) for j in idx])
                x = torch.zeros(len(idx), int(L.max()), dtype=torch.long)
                for r, j in enumerate(idx):
                    x[r, : len(hist[j])] = torch.from_numpy(hist[j])
                res[idx] = model.item_scores(model.last_hidden(x, L)).topk(K, dim=-1).indices.numpy()
        return res

    # warm up + agreement check
    a, b = run_cell(), run_torch()
    agree = float(np.mean([(a[i] == b[i]).all() for i in range(n_users)]))
    t_cell = best_of(run_cell, args.repeats)
    t_torch = best_of(run_torch, args.repeats)
    from _common import provenance

    res = {
        **provenance(),
        "dataset": "ml-100k (all users, full histories)",
        "users": n_users,
        "events": n_events,
        "model": cfg.to_dict(),
        "k": K,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "top_k_agreement_cell_vs_torch": agree,
        "users_per_s": {
            "cell": n_users / t_cell,
            "torch_full_sequence_forward": n_users / t_torch,
        },
        "seconds": {"cell": t_cell, "torch": t_torch},
        "ratio_cell_over_torch": t_torch / t_cell,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
