"""What a resumable checkpoint costs per epoch on ML-100K: seconds to write one (serialise,
fsync, rename), its size in MB, and that against the epoch's training time, from one run of
`recblr.train.train` with `checkpoint_dir` set (the paper's model: D=64, L=2).

    OMP_NUM_THREADS=1 python benchmarks/checkpoint_cost.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from _common import provenance, write_result

    import recblr.train
    from recblr.config import ModelConfig, TrainConfig
    from recblr.data import load_dataset
    from recblr.resume import load_resume

    data = load_dataset("ml-100k")
    writes: list[dict] = []
    real_save = recblr.train.save_resume

    def timed_save(directory, state, counter):
        t0 = time.perf_counter()
        path = real_save(directory, state, counter)
        writes.append({"seconds": time.perf_counter() - t0, "bytes": path.stat().st_size})
        return path

    recblr.train.save_resume = timed_save
    cfg = TrainConfig(epochs=args.epochs, patience=args.epochs, seed=2024, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        result = recblr.train.train(data, ModelConfig(n_items=data.n_items), cfg,
                                    checkpoint_dir=Path(tmp) / "ck", save_every_min=None)
        t0 = time.perf_counter()
        load_resume(Path(tmp) / "ck", say=lambda _m: None)
        load_seconds = time.perf_counter() - t0
    epoch_s = result.metrics["seconds_per_epoch"]
    write_s = sum(w["seconds"] for w in writes) / len(writes)
    mb = writes[-1]["bytes"] / 2**20
    payload = {
        **provenance(),
        "dataset": {"name": "ml-100k", "users": len(data.user_ids), "items": data.n_items,
                    "interactions": data.n_interactions},
        "model": {"dim": 64, "layers": 2, "parameters": sum(p.numel() for p in result.model.parameters())},
        "epochs": args.epochs,
        "checkpoints_written": len(writes),
        "train_seconds_per_epoch": epoch_s,
        "checkpoint_write_seconds": write_s,
        "checkpoint_write_seconds_each": [w["seconds"] for w in writes],
        "checkpoint_mb": mb,
        "checkpoint_load_seconds": load_seconds,
        "write_over_epoch": write_s / epoch_s,
        "note": "one checkpoint per epoch end; the file holds weights, Adam's two moments and the "
                "best-validation weights (4x the weights), plus RNG states and the run's history; "
                "the machine is shared with other jobs, so seconds carry their load",
    }
    print(write_result("checkpoint_cost", payload))
    print(f"epoch {epoch_s:.2f}s, checkpoint {write_s:.3f}s ({100 * write_s / epoch_s:.2f}% of an epoch), {mb:.2f} MB")


if __name__ == "__main__":
    main()
