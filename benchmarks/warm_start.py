"""Warm start vs training from scratch after new data arrives (ML-100K split by time).

    OMP_NUM_THREADS=1 python benchmarks/warm_start.py [--seeds 2024 1 2] [--patience 5] [--out warm_start]

Week 1 is the first 80% of each user's events (by timestamp); week 2 is all of them, so each
user's validation and test targets (leave-one-out on week 2) lie in what week 1 never saw.
A model is trained on week 1 from scratch; then, on week 2, one run from scratch and one warm
start from the week-1 model (`recblr.warm_start`: mapping extended, old rows and weights
kept), with the same settings and seed. Reported per run: best validation NDCG@10 (stream
mode, the early-stopping metric), the epoch, training seconds, and wall and CPU seconds
(training plus validation, from the run's start) to reach it, the whole run's seconds, and
when the warm run first matches the scratch run's best. The result file is rewritten after
each seed; `--combine` makes one result of seeds run in parallel processes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance, write_result  # noqa: E402

from recblr.checkpoint import Checkpoint  # noqa: E402
from recblr.config import ModelConfig, TrainConfig  # noqa: E402
from recblr.data import Interactions, SequenceData, build_sequences, resolve_data  # noqa: E402
from recblr.model import RecBLR  # noqa: E402
from recblr.readers import read_interactions  # noqa: E402
from recblr.train import TrainResult, train  # noqa: E402
from recblr.warm_start import extend_vocabulary, warm_config, warm_model  # noqa: E402


def first_part(inter: Interactions, frac: float) -> Interactions:
    """The first `frac` of each user's events in time order (ties in file order), at least one."""
    order = np.lexsort((np.arange(len(inter)), inter.timestamps, inter.user_codes))
    users = inter.user_codes[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)  # position in the user's timeline
    quota = np.maximum(1, np.rint(frac * counts).astype(np.int64))
    rows = np.sort(order[rank < np.repeat(quota, counts)])
    return Interactions(inter.user_codes[rows], inter.user_vocab, inter.item_codes[rows], inter.item_vocab,
                        inter.timestamps[rows], inter.source + f" (first {frac:.0%} per user)")


class EpochClock(io.TextIOBase):
    """The console `train` prints to: notes the wall and CPU time of each "epoch N |" line
    (printed after the epoch's validation) and passes everything on to stderr. CPU seconds
    (one thread) hardly change with what else the machine runs; wall seconds do."""

    def __init__(self):
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.epoch_ends: list[tuple[float, float]] = []

    def write(self, s: str) -> int:
        if s.startswith("epoch "):
            self.epoch_ends.append((time.perf_counter() - self.start, time.process_time() - self.cpu_start))
        sys.stderr.write(s)
        return len(s)


def timed_train(
    prepare: Callable[[], tuple[SequenceData, ModelConfig, RecBLR | None]], cfg: TrainConfig
) -> tuple[TrainResult, dict]:
    """Train what `prepare` makes (data, config, initial weights; made inside the clock, so a
    warm start's mapping extension and weight copy count) and summarise the run."""
    from rich.console import Console

    clock = EpochClock()
    data, model_cfg, init = prepare()
    result = train(data, model_cfg, cfg, console=Console(file=clock, width=120), init=init)
    wall, cpu = time.perf_counter() - clock.start, time.process_time() - clock.cpu_start
    hist = result.metrics["history"]
    if len(clock.epoch_ends) != len(hist):
        raise RuntimeError("could not time every epoch: train() printed another number of epoch lines")
    for h, (end, cpu_end) in zip(hist, clock.epoch_ends, strict=True):
        h["wall_seconds"], h["cpu_seconds"] = end, cpu_end
    best = result.metrics["best_epoch"]
    return result, {
        "best_valid_ndcg@10": max(h["valid_ndcg@10"] for h in hist),
        "best_epoch": best,
        "train_seconds_to_best": sum(h["seconds"] for h in hist[:best]),
        "wall_seconds_to_best": hist[best - 1]["wall_seconds"],
        "cpu_seconds_to_best": hist[best - 1]["cpu_seconds"],
        "epochs_run": len(hist),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "test_stream_ndcg@10": result.metrics["test"]["stream"]["ndcg@10"],
        "valid_curve": [round(h["valid_ndcg@10"], 5) for h in hist],
        "wall_curve": [round(h["wall_seconds"], 1) for h in hist],
        "cpu_curve": [round(h["cpu_seconds"], 1) for h in hist],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def one_seed(inter: Interactions, frac: float, epochs: int, patience: int, seed: int) -> dict:
    week1 = build_sequences(first_part(inter, frac), 5)
    week2 = build_sequences(inter, 5)
    cfg = TrainConfig(epochs=epochs, patience=patience, seed=seed, device="cpu")
    arch = {"dim": 64, "n_layers": 2}

    r1, week1_run = timed_train(lambda: (week1, ModelConfig(n_items=week1.n_items, **arch), None), cfg)
    _, scratch_run = timed_train(lambda: (week2, ModelConfig(n_items=week2.n_items, **arch), None), cfg)

    ckpt = Checkpoint(r1.model, r1.model.cfg, week1.item_ids, week1.user_ids, r1.metrics, {}, {})

    def warm_start() -> tuple[SequenceData, ModelConfig, RecBLR]:
        data = extend_vocabulary(week2, ckpt.item_ids)
        model = warm_model(ckpt, warm_config(ckpt, data), seed)
        return data, model.cfg, model

    warm, warm_run = timed_train(warm_start, cfg)
    new_items = warm.model.cfg.n_items - week1.n_items

    target = scratch_run["best_valid_ndcg@10"]
    reached = next(({"epoch": h["epoch"], "wall_seconds": h["wall_seconds"], "cpu_seconds": h["cpu_seconds"],
                     "train_seconds": sum(g["seconds"] for g in warm.metrics["history"][: h["epoch"]])}
                    for h in warm.metrics["history"] if h["valid_ndcg@10"] >= target), None)
    return {
        "seed": seed,
        "week1": {"users": len(week1.user_ids), "items": week1.n_items, "interactions": week1.n_interactions},
        "week2": {"users": len(week2.user_ids), "items": week2.n_items, "interactions": week2.n_interactions,
                  "new_items": new_items},
        "train_config": cfg.to_dict(),
        "model": arch,
        "week1_run": week1_run,
        "scratch": scratch_run,
        "warm": warm_run,
        "warm_reaches_scratch_best": reached,
        "ratio_wall_seconds_to_best_warm_vs_scratch": warm_run["wall_seconds_to_best"] / scratch_run["wall_seconds_to_best"],
        "ratio_cpu_seconds_to_best_warm_vs_scratch": warm_run["cpu_seconds_to_best"] / scratch_run["cpu_seconds_to_best"],
    }


def summarise(runs: list[dict]) -> dict:
    """Mean (and min, max) over seeds of the figures the docs quote."""
    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}

    out = {f"{k}_{m}": stats([r[k][m] for r in runs]) for k in ("scratch", "warm")
           for m in ("best_valid_ndcg@10", "best_epoch", "wall_seconds_to_best", "cpu_seconds_to_best",
                     "wall_seconds", "cpu_seconds", "test_stream_ndcg@10")}
    for clock in ("wall", "cpu"):
        key = f"ratio_{clock}_seconds_to_best_warm_vs_scratch"
        out[key] = stats([r[key] for r in runs])
    reached = [r["warm_reaches_scratch_best"] for r in runs]
    out["warm_reached_scratch_best"] = f"{sum(x is not None for x in reached)} of {len(runs)} seeds"
    if all(x is not None for x in reached):
        for m in ("epoch", "wall_seconds", "cpu_seconds"):
            out[f"warm_{m}_to_scratch_best"] = stats([x[m] for x in reached])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frac", type=float, default=0.8)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[TrainConfig.seed])
    p.add_argument("--out", default="warm_start")
    p.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                   help="instead: one result of the runs in these result files (seeds run in parallel)")
    args = p.parse_args()
    if args.combine:
        parts = [json.loads(f.read_text()) for f in args.combine]
        runs = [r for part in parts for r in part["runs"]]
        print(write_result(args.out, {**provenance(), "split": parts[0]["split"], "note": parts[0]["note"],
                                      "seeds_done": [r["seed"] for r in runs], "summary": summarise(runs),
                                      "parts": [{k: v for k, v in part.items() if k not in ("runs", "summary")}
                                                for part in parts], "runs": runs}))
        return
    torch.set_num_threads(1)

    inter = read_interactions(resolve_data("ml-100k"))
    load = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(inter, args.frac, args.epochs, args.patience, seed))
        payload = {
            **provenance(),
            "load_average_at_start": load,
            "note": "one thread; a 2-core machine shared with other sessions' jobs (their load varies)",
            "split": f"first {args.frac:.0%} of each user's events, then all (ML-100K, 5-core)",
            "seeds_done": [r["seed"] for r in runs],
            "summary": summarise(runs),
            "runs": runs,
        }
        print(write_result(args.out, payload))
        for k in ("scratch", "warm"):
            r = runs[-1][k]
            print(f"seed {seed} {k}: valid NDCG@10 {r['best_valid_ndcg@10']:.4f} at epoch {r['best_epoch']} "
                  f"({r['wall_seconds_to_best']:.0f} s wall), run {r['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
