"""Epoch time of `recblr train` on ML-100K with 1 and with 2 processes (DDP, gloo on CPU), one
thread per process, rounds alternating 1, 2, 1, 2, ... so both see the same background load.

The figure is the training part of an epoch (`seconds_per_epoch`: batches, forward, backward,
gradient all-reduce, optimizer), not validation, which rank 0 runs alone either way.

    python benchmarks/ddp.py [--rounds 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_run(nproc: int, epochs: int, tmp: Path) -> dict:
    metrics = tmp / f"m{nproc}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "recblr", "train", "--data", "ml-100k", "--epochs", str(epochs),
                        "--nproc", str(nproc), "--device", "cpu", "--out", str(tmp / f"m{nproc}.pt"),
                        "--metrics-json", str(metrics)], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"--nproc {nproc} failed:\n{r.stderr}")
    m = json.loads(metrics.read_text())
    return {"seconds_per_epoch": m["seconds_per_epoch"], "wall_seconds": time.perf_counter() - t0,
            "loss": [row["loss"] for row in m["history"]], "load_average": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    from _common import provenance, write_result

    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for n in (1, 2):
                runs[n].append(one_run(n, args.epochs, Path(tmp)))
                print(n, runs[n][-1], flush=True)
    med = {n: statistics.median(r["seconds_per_epoch"] for r in rs) for n, rs in runs.items()}
    payload = {
        **provenance(),
        "threads_per_process": 1,
        "cpus": os.cpu_count(),
        "dataset": "ml-100k",
        "epochs_per_run": args.epochs,
        "runs": {str(n): rs for n, rs in runs.items()},
        "median_seconds_per_epoch": {str(n): v for n, v in med.items()},
        "speedup_2_over_1": med[1] / med[2],
        "note": "this machine has 2 cores shared with other jobs (load average per run recorded); "
                "the ratio is from one run of this script, rounds alternating",
    }
    print(write_result("ddp", payload))
    print(f"1 process {med[1]:.2f}s/epoch, 2 processes {med[2]:.2f}s/epoch: {med[1] / med[2]:.2f}x")


if __name__ == "__main__":
    main()
