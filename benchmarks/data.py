"""Preparing interaction logs at production size: seconds and peak RSS of read + k-core +
split + sequences, the pyarrow/CSR path against the old one (tests/data_oracle.py), with a
bare pyarrow read of the same three columns as the floor.

Synthetic logs: power-law item popularity (Zipf, s=1.0) and user activity (s=0.5), users
about 2% of events, rows in time order with many equal timestamps (one-second clock).
Parquet: integer user ids, string item ids, timestamp[s]; CSV: the same values as text.
Files are written in chunks of 10^7 rows into --dir (not the repository).

Every case runs in its own subprocess (peak RSS is its own); cases run one
after another. Each case also prints a digest of (item ids, user ids, items, offsets), so
the old and new paths, and the CSV and Parquet copies, are checked to give the same data.

    python benchmarks/data.py --sizes 1e6 1e7 1e8 --old-max 1e7 [--dir /tmp/recblr-bench]
    python benchmarks/data.py --feed /tmp/recblr-bench/events_1e07.parquet --out data_feed   # a file of --sizes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
CHUNK = 10_000_000
MIN_COUNT = 5


def n_items_for(n: int) -> int:
    """Catalog size: a tenth of the events, capped at 10^6 (small files for tests stay 5-core-able)."""
    return min(1_000_000, max(100, n // 10))


def zipf_cdf(n: int, s: float):
    import numpy as np

    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return np.cumsum(w) / w.sum()


def generate(n: int, directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """events_<n>.parquet and events_<n>.csv, written chunk by chunk (bounded memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    stem = directory / f"events_{n:.0e}".replace("+", "")
    pq_path, csv_path = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    if pq_path.exists() and csv_path.exists():
        return pq_path, csv_path
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users, n_items = max(1, n // 50), n_items_for(n)
    user_ids = rng.choice(10**9, n_users, replace=False).astype(np.int64)  # scattered integer ids
    item_ids = pa.array([f"sku-{k:07x}" for k in rng.permutation(n_items)])
    u_cdf, i_cdf = zipf_cdf(n_users, 0.5), zipf_cdf(n_items, 1.0)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.string()), ("ts", pa.timestamp("s"))])
    t0 = 1_700_000_000
    tmp_pq, tmp_csv = pq_path.with_suffix(".part.parquet"), csv_path.with_suffix(".part.csv")
    with pq.ParquetWriter(tmp_pq, schema) as pw, pcsv.CSVWriter(tmp_csv, schema) as cw:
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            u = user_ids[np.minimum(np.searchsorted(u_cdf, rng.random(m)), n_users - 1)]
            i = np.minimum(np.searchsorted(i_cdf, rng.random(m)), n_items - 1)
            # one event every ~0.3 s on a one-second clock: many equal timestamps
            ts = t0 + (start + np.arange(m)) * 3 // 10
            batch = pa.table({"user_id": u, "item_id": item_ids.take(pa.array(i)),
                              "ts": pa.array(ts, pa.timestamp("s"))}, schema=schema)
            pw.write_table(batch, row_group_size=1_000_000)
            cw.write_table(pa.table({"user_id": u, "item_id": batch.column("item_id"),
                                     "ts": pa.array(ts, pa.int64())}).cast(
                pa.schema([("user_id", pa.int64()), ("item_id", pa.string()), ("ts", pa.int64())])))
    os.replace(tmp_pq, pq_path)
    os.replace(tmp_csv, csv_path)
    return pq_path, csv_path


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def digest(item_ids, user_ids, items, offsets) -> str:
    import numpy as np

    h = hashlib.sha256()
    h.update("\0".join(item_ids).encode())
    h.update(b"\1" + "\0".join(user_ids).encode())
    h.update(np.ascontiguousarray(items, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(offsets, dtype=np.int64).tobytes())
    return h.hexdigest()


def case(kind: str, path: str) -> dict:
    """One measurement, in this (fresh) process: `bare`, `new` or `old`; peak RSS is this
    process's own (getrusage of itself, read at the end)."""
    import numpy as np
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from recblr.data import build_sequences
    from recblr.readers import Steps, read_interactions

    sys.path.insert(0, str(ROOT / "tests"))
    import data_oracle as old

    steps = Steps(show=False)  # imports done: the clock starts at the file
    out: dict = {}
    cpu = time.process_time()
    t = time.perf_counter()
    if kind == "bare":
        cols = ["user_id", "item_id", "ts"]
        if path.endswith(".parquet"):
            table = pq.read_table(path, columns=cols)
        else:
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(include_columns=cols))
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - cpu
        out["rows"] = table.num_rows
        out["peak_rss_gb"] = peak_rss_gb()
        return out
    if kind == "new":
        inter = read_interactions(path, time_col="ts", steps=steps)
        out["read_seconds"] = time.perf_counter() - t
        d = build_sequences(inter, MIN_COUNT, steps=steps)
        del inter
        out["build_seconds"] = time.perf_counter() - t - out["read_seconds"]
        for split in ("train", "valid", "test"):  # what the CSR consumers read
            d.bounds(split)
        d.targets("valid"), d.targets("test")
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - cpu
        out["peak_rss_gb"] = peak_rss_gb()
        items, offsets, item_ids, user_ids = d.items, d.offsets, d.item_ids, d.user_ids
    else:
        inter = old.load_interactions(path, time_col="ts")
        out["read_seconds"] = time.perf_counter() - t
        d = old.build_sequences(inter, MIN_COUNT)
        del inter
        out["build_seconds"] = time.perf_counter() - t - out["read_seconds"]
        d.split_histories("valid"), d.split_histories("test"), d.train_sequences()
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - cpu
        out["peak_rss_gb"] = peak_rss_gb()  # before the digest's copies
        items = np.concatenate(d.sequences)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in d.sequences])])
        item_ids, user_ids = d.item_ids, d.user_ids
    out["users"], out["items"], out["interactions"] = len(user_ids), len(item_ids) - 1, int(offsets[-1])
    out["digest"] = digest(item_ids, user_ids, items, offsets)
    return out


# Training recipes the feed is timed against: the default (full-catalog softmax), and the
# two a large catalog calls for (sampled softmax, then also a sparse item-table gradient).
RECIPES = {"ce": {"loss": "ce"}, "sampled": {"loss": "sampled"},
           "sampled-sparse": {"loss": "sampled", "sparse_embeddings": True}}


def feed(path: Path, recipes: list[str], max_steps: int, budget_s: float) -> dict:
    """One training epoch's data feed against its compute, on the prepared file, through the
    training loop's own pieces. Feed: `recblr.train.epoch_batches` (windows, length batches,
    padding and each row's context; all of an epoch's host-side work). Compute:
    `recblr.train.train_epoch` steps (tensors to the device, carried state, forward, loss,
    backward, the optimiser of `make_optimizer`), timed one by one after a warm-up step, up
    to `max_steps` steps or `budget_s` seconds per recipe (at least 3 steps), and scaled to
    the epoch's batches (CPU, one thread)."""
    import numpy as np
    import torch

    from recblr.config import ModelConfig, TrainConfig
    from recblr.data import load_dataset
    from recblr.losses import NegativeSampler, make_loss
    from recblr.model import RecBLR
    from recblr.train import epoch_batches, make_optimizer, train_epoch

    torch.set_num_threads(1)
    t = time.perf_counter()
    d = load_dataset(str(path), time_col="ts", show_progress=False)
    prepare = time.perf_counter() - t
    device = torch.device("cpu")
    base = TrainConfig(device="cpu")
    t = time.perf_counter()
    seqs = d.train_sequences()
    batches = epoch_batches(seqs, base, np.random.default_rng(0))
    feed_epoch = time.perf_counter() - t
    runs = {}
    for recipe in recipes:
        cfg = TrainConfig(device="cpu", **RECIPES[recipe])
        torch.manual_seed(0)
        model = RecBLR(ModelConfig(n_items=d.n_items))
        opt = make_optimizer(model, cfg)
        sampler = NegativeSampler.build(cfg.sampler, d.n_items, seqs) if cfg.loss == "sampled" else None
        loss_fn = make_loss(cfg.loss, model.item_emb, torch.Generator().manual_seed(0), cfg.negatives, sampler)
        ends = [time.perf_counter()]

        def on_step(_tally, ends=ends) -> bool:
            ends.append(time.perf_counter())
            timed = len(ends) - 2  # steps after the warm-up one
            return timed >= max_steps or (timed >= 3 and ends[-1] - ends[0] >= budget_s)

        train_epoch(model, opt, batches, loss_fn, device, on_step)
        step_s = np.diff(ends)
        step_s = step_s[1:] if len(step_s) > 1 else step_s  # the first step warms up allocator and kernels
        compute_epoch = len(batches) * float(np.mean(step_s))
        runs[recipe] = {**RECIPES[recipe], "timed_batches": len(step_s), "first_step_seconds": float(ends[1] - ends[0]),
                      "compute_seconds_per_batch": float(np.mean(step_s)),
                      "compute_seconds_per_batch_median": float(np.median(step_s)),
                      "compute_seconds_per_batch_min_max": [float(step_s.min()), float(step_s.max())],
                      "compute_epoch_seconds_estimate": compute_epoch,
                      "feed_share": feed_epoch / (feed_epoch + compute_epoch)}
        if cfg.loss == "sampled":
            runs[recipe]["negatives"] = cfg.negatives
    pairs = sum(b.n_pairs for b in batches)
    return {"file": path.name, "users": d.n_users, "interactions": d.n_interactions, "prepare_seconds": prepare,
            "batches": len(batches), "training_pairs": pairs, "feed_epoch_seconds": feed_epoch,
            "feed_seconds_per_batch": feed_epoch / len(batches), "recipes": runs,
            "model": ModelConfig(n_items=d.n_items).to_dict(), "batch_size": base.batch_size,
            "train_window": base.window, "example_mode": base.example_mode}


def run_case(kind: str, path: Path, timeout: float) -> dict:
    """`case` in a fresh subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, __file__, "--case", kind, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    t = time.perf_counter()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"kind": kind, "file": path.name, "error": f"did not finish in {timeout:.0f} s"}
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"kind": kind, "file": path.name, "error": stderr.strip().splitlines()[-1:]}
    res = {"kind": kind, "file": path.name, **json.loads(stdout.strip().splitlines()[-1])}
    res["process_seconds"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7])
    ap.add_argument("--old-max", type=float, default=1e7, help="run the old path up to this many events")
    ap.add_argument("--formats", nargs="+", default=["parquet", "csv"])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/recblr-bench"))
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="data")
    ap.add_argument("--feed", type=Path, help="instead: one epoch's data feed vs compute on this file")
    ap.add_argument("--feed-steps", type=int, default=20, help="most training steps timed per recipe (after one warm-up step)")
    ap.add_argument("--feed-seconds", type=float, default=300, help="time budget per recipe (at least 3 steps)")
    ap.add_argument("--feed-recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES),
                    help="training recipes to time the steps of")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(*args.case)))
        return
    from _common import provenance, write_result

    if args.feed:
        load = [round(x, 2) for x in os.getloadavg()]
        res = feed(args.feed, args.feed_recipes, args.feed_steps, args.feed_seconds)
        print(json.dumps(res, indent=2))
        print(write_result(args.out, {"provenance": provenance(), "note": "2-core machine shared with other "
                                      "sessions' jobs", "load_average_at_start": load, "feed": res}))
        return

    results, comparisons = [], []
    for size in args.sizes:
        n = int(size)
        t = time.perf_counter()
        pq_path, csv_path = generate(n, args.dir)
        print(f"{n:.0e} events: files ready in {time.perf_counter() - t:.0f} s", flush=True)
        digests = {}
        for fmt in args.formats:
            path = pq_path if fmt == "parquet" else csv_path
            kinds = ["bare", "new"] + (["old"] if fmt == "csv" and n <= args.old_max else [])
            row = {"events": n, "format": fmt, "file_gb": path.stat().st_size / 1e9}
            for kind in kinds:
                r = run_case(kind, path, args.timeout)
                print(json.dumps(r), flush=True)
                results.append({"events": n, "format": fmt, **r})
                row[kind] = r
                if "digest" in r:
                    digests[f"{fmt}/{kind}"] = r["digest"]
            if "seconds" in row.get("new", {}) and "seconds" in row.get("bare", {}):
                row["new_over_bare"] = row["new"]["seconds"] / row["bare"]["seconds"]
                row["new_over_bare_cpu"] = row["new"]["cpu_seconds"] / row["bare"]["cpu_seconds"]
            if "seconds" in row.get("old", {}) and "seconds" in row.get("new", {}):
                row["old_over_new"] = row["old"]["seconds"] / row["new"]["seconds"]
                row["old_over_new_cpu"] = row["old"]["cpu_seconds"] / row["new"]["cpu_seconds"]
                row["old_over_new_rss"] = row["old"]["peak_rss_gb"] / row["new"]["peak_rss_gb"]
            comparisons.append({k: v for k, v in row.items() if k not in ("bare", "new", "old")} | {
                k: {m: row[k].get(m) for m in ("seconds", "cpu_seconds", "peak_rss_gb")}
                for k in ("bare", "new", "old") if k in row})
        same = len(set(digests.values())) == 1
        print(f"{n:.0e}: same sequences across {sorted(digests)}: {same}", flush=True)
        comparisons.append({"events": n, "same_sequences": same, "compared": sorted(digests)})
    payload = {
        "provenance": provenance(),
        "note": "2-core machine shared with other sessions' jobs; cases run one after another",
        "min_count": MIN_COUNT,
        "generator": "Zipf items s=1.0, Zipf users s=0.5, users = events/50, rows in time order, 1 s clock",
        "summary": comparisons,
        "cases": results,
    }
    print(write_result(args.out, payload))


if __name__ == "__main__":
    main()
