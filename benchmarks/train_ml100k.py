"""Full training run on ML-100K with the defaults; metrics to benchmarks/results/train_ml100k.json.

    python benchmarks/train_ml100k.py [--epochs N] [--example-mode sequence|prefix]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import provenance, write_result  # noqa: E402

from recblr.config import ModelConfig, TrainConfig  # noqa: E402
from recblr.data import load_dataset  # noqa: E402
from recblr.kernels import get_backend  # noqa: E402
from recblr.train import resolve_device, train  # noqa: E402


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def paired_modes(model, data, max_len: int) -> dict:
    """Per-user test NDCG@10 of stream minus window: is a gap between the modes noise?"""
    import numpy as np

    from recblr.evaluate import history_ranks, ndcg_per_user

    hist, tgt = data.split_histories("test")
    nd = {}
    for mode in ("window", "stream"):
        r = history_ranks(model, hist, tgt, mode, max_len)
        nd[mode] = ndcg_per_user(r, 10)
    diff = nd["stream"] - nd["window"]
    long = np.array([len(h) > max_len for h in hist])
    return {
        "users_longer_than_max_len": int(long.sum()),
        "ndcg10_stream_minus_window": float(diff.mean()),
        "standard_error": float(diff.std(ddof=1) / np.sqrt(len(diff))),
        "relative": float(diff.mean() / nd["window"].mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--example-mode", default="sequence")
    p.add_argument("--out", default="/tmp/recblr-ml100k.pt")
    p.add_argument("--name", default="train_ml100k")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--train-window", type=int, default=None)
    p.add_argument("--window-offsets", default=TrainConfig.window_offsets)
    p.add_argument("--lambda-lr-scale", type=float, default=TrainConfig.lambda_lr_scale)
    p.add_argument("--device", default=TrainConfig.device)
    args = p.parse_args()
    data = load_dataset("ml-100k")
    cfg = TrainConfig(epochs=args.epochs, example_mode=args.example_mode, seed=args.seed,
                      train_window=args.train_window, window_offsets=args.window_offsets,
                      lambda_lr_scale=args.lambda_lr_scale, device=args.device)
    t0 = time.perf_counter()
    result = train(data, ModelConfig(n_items=data.n_items), cfg, out=args.out)
    wall = time.perf_counter() - t0
    m = result.metrics
    payload = {
        **provenance(),
        "dataset": {"name": "ml-100k", "users": len(data.user_ids), "items": data.n_items,
                    "interactions": data.n_interactions},
        "device": device_name(resolve_device(cfg.device)),
        "scan_backend": get_backend(resolve_device(cfg.device)),
        "train_config": cfg.to_dict(),
        "wall_seconds": wall,
        "seconds_per_epoch": m["seconds_per_epoch"],
        "epochs": m["epochs"],
        "best_epoch": m["best_epoch"],
        "valid": m["valid"],
        "test": m["test"],
        "history": m["history"],
        "stream_vs_window_test": paired_modes(result.model, data, cfg.max_len),
    }
    print(write_result(args.name, payload))
    print({mode: round(v["ndcg@10"], 4) for mode, v in m["test"].items()})


if __name__ == "__main__":
    main()
