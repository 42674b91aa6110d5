"""Warm start vs training from scratch after new data arrives (ML-100K split by time).

    OMP_NUM_THREADS=1 python benchmarks/warm_start.py [--patience 5] [--out benchmarks/results/warm_start.json]

Week 1 is the first 80% of each user's events (by timestamp); week 2 is all of them, so each
user's validation and test targets (leave-one-out on week 2) lie in what week 1 never saw.
A model is trained on week 1 from scratch; then, on week 2, one run from scratch and one warm
start from the week-1 model (`recblr.warm_start`: mapping extended, old rows and weights
kept), with the same settings and seed. Reported per run: best validation NDCG@10 (stream
mode, the early-stopping metric), the epoch and training seconds to reach it, the whole run's
seconds, and the warm run's seconds to first match the scratch run's best.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance, write_result  # noqa: E402

from recblr.config import ModelConfig, TrainConfig  # noqa: E402
from recblr.data import Interactions, build_sequences, load_interactions, resolve_data  # noqa: E402
from recblr.train import train  # noqa: E402
from recblr.warm_start import extend_vocabulary, warm_config, warm_model  # noqa: E402


def first_part(inter: Interactions, frac: float) -> Interactions:
    """The first `frac` of each user's events in time order (ties in file order)."""
    users = np.asarray(inter.users, dtype=object)
    order = np.lexsort((np.arange(len(users)), inter.timestamps, users))
    keep = np.zeros(len(users), bool)
    start = 0
    su = users[order]
    while start < len(order):
        end = start
        while end < len(order) and su[end] == su[start]:
            end += 1
        n = end - start
        keep[order[start : start + max(1, int(round(frac * n)))]] = True
        start = end
    rows = np.flatnonzero(keep)
    return Interactions(
        [inter.users[i] for i in rows], [inter.items[i] for i in rows],
        inter.timestamps[rows], inter.source + f" (first {frac:.0%} per user)",
    )  # fmt: skip


def summary(metrics: dict, wall: float) -> dict:
    hist = metrics["history"]
    best = metrics["best_epoch"]
    return {
        "best_valid_ndcg@10": max(h["valid_ndcg@10"] for h in hist),
        "best_epoch": best,
        "train_seconds_to_best": sum(h["seconds"] for h in hist[:best]),
        "epochs_run": len(hist),
        "wall_seconds": wall,
        "test_stream_ndcg@10": metrics["test"]["stream"]["ndcg@10"],
        "valid_curve": [round(h["valid_ndcg@10"], 5) for h in hist],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frac", type=float, default=0.8)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--out", default="warm_start")
    args = p.parse_args()
    torch.set_num_threads(1)

    inter = load_interactions(resolve_data("ml-100k"))
    week1 = build_sequences(first_part(inter, args.frac), 5)
    week2 = build_sequences(inter, 5)
    cfg = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.seed, device="cpu")
    arch = {"dim": 64, "n_layers": 2}

    t = time.perf_counter()
    r1 = train(week1, ModelConfig(n_items=week1.n_items, **arch), cfg)
    week1_run = summary(r1.metrics, time.perf_counter() - t)

    t = time.perf_counter()
    scratch = train(week2, ModelConfig(n_items=week2.n_items, **arch), cfg)
    scratch_run = summary(scratch.metrics, time.perf_counter() - t)

    from recblr.checkpoint import Checkpoint

    ckpt = Checkpoint(r1.model, r1.model.cfg, week1.item_ids, week1.user_ids, r1.metrics, {}, {})
    data = extend_vocabulary(week2, week1.item_ids)
    t = time.perf_counter()
    model = warm_model(ckpt, warm_config(ckpt, data), args.seed)
    warm = train(data, model.cfg, cfg, init=model)
    warm_run = summary(warm.metrics, time.perf_counter() - t)

    target = scratch_run["best_valid_ndcg@10"]
    secs, reached = 0.0, None
    for h in warm.metrics["history"]:
        secs += h["seconds"]
        if h["valid_ndcg@10"] >= target:
            reached = {"epoch": h["epoch"], "train_seconds": secs}
            break
    payload = {
        **provenance(),
        "split": f"first {args.frac:.0%} of each user's events, then all (ML-100K, 5-core)",
        "week1": {"users": len(week1.user_ids), "items": week1.n_items, "interactions": week1.n_interactions},
        "week2": {
            "users": len(week2.user_ids), "items": week2.n_items, "interactions": week2.n_interactions,
            "new_items": data.n_items - week1.n_items,
        },
        "train_config": cfg.to_dict(),
        "model": arch,
        "week1_run": week1_run,
        "scratch": scratch_run,
        "warm": warm_run,
        "warm_reaches_scratch_best": reached,
        "ratio_train_seconds_to_best_warm_vs_scratch": (
            warm_run["train_seconds_to_best"] / scratch_run["train_seconds_to_best"]
        ),
    }  # fmt: skip
    print(write_result(args.out, payload))
    for k in ("scratch", "warm"):
        r = payload[k]
        print(f"{k}: valid NDCG@10 {r['best_valid_ndcg@10']:.4f} at epoch {r['best_epoch']} "
              f"({r['train_seconds_to_best']:.0f} s), run {r['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
