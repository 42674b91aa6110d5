"""Batch scoring of ML-100K histories in Spark local[2] vs `recblr score` on the same 2 cores.

    python benchmarks/score_engines.py [--repeats 3] [--partitions 2] [--out PATH]

Both read the same jsonl file of every user's full history (oldest first) and write top-20
per user as jsonl:
- cli:   the `recblr score` command, a fresh process per run (ORT's default threads, i.e. all
         cores; also timed with --threads 1, one core);
- spark: one SparkSession (local[2]) kept across runs; each run is a whole job: read the jsonl,
         `mapInPandas(score_frames)` (one ORT thread per task, the cell shipped with addFile),
         write the jsonl output. The first job also starts the Python workers and opens the
         cell in each ("cold"); later jobs reuse both ("warm").
The two are timed in turns, best of --repeats each; the ratio is spark/cli users per second.
The cell is a randomly initialised model at the default sizes (seed 0): speed does not depend on
training. Session start-up is reported apart from the job times.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

K = 20


def write_histories(path: Path, data) -> int:
    with open(path, "w") as f:
        for user, seq in zip(data.user_ids, data.sequences, strict=True):
            items = [data.item_ids[int(i)] for i in seq]
            f.write(json.dumps({"user": user, "items": items}) + "\n")
    return path.stat().st_size


def read_jsonl_dir(path: Path) -> dict[str, list[str]]:
    files = [path] if path.is_file() else sorted(path.glob("part-*"))
    out = {}
    for p in files:
        for line in p.read_text().splitlines():
            r = json.loads(line)
            out[r["user"]] = r["items"]
    return out


def start_spark(partitions: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from engine_reference import local_spark

    # the input file in `partitions` splits: Spark splits at (bytes + open cost) // cores
    # when that is below maxPartitionBytes; an open cost of partitions-1 makes it a ceil
    return local_spark(
        "recblr-score-engines",
        "1g",
        **{
            "spark.sql.files.openCostInBytes": str(partitions - 1),
            "spark.default.parallelism": str(partitions),
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=2, help="input splits of the Spark job")
    ap.add_argument("--out", default="benchmarks/results/score_engines.json")
    args = ap.parse_args()

    import torch

    from recblr.config import ModelConfig
    from recblr.data import load_dataset
    from recblr.export.onnx_export import export_cell
    from recblr.model import RecBLR
    from recblr.runtime import frames

    data = load_dataset("ml-100k")
    tmp = Path(tempfile.mkdtemp(prefix="score-engines-"))
    torch.manual_seed(0)
    cfg = ModelConfig(n_items=data.n_items)
    cell = export_cell(RecBLR(cfg).eval(), tmp / "cell.onnx", top_k=K, item_ids=data.item_ids)
    src = tmp / "histories.jsonl"
    write_histories(src, data)
    n_users = len(data.user_ids)

    cli_cmd = [sys.executable, "-m", "recblr", "score", "--onnx", str(cell), "-i", str(src)]

    def run_cli(*extra: str) -> tuple[float, Path]:
        dst = tmp / "cli.jsonl"
        t0 = time.perf_counter()
        subprocess.run([*cli_cmd, "-o", str(dst), *extra], check=True, capture_output=True)
        return time.perf_counter() - t0, dst

    t0 = time.perf_counter()
    spark = start_spark(args.partitions)
    t_session = time.perf_counter() - t0
    spark.sparkContext.addFile(str(cell))
    score = functools.partial(frames.score_frames, cell=frames.SparkFile(cell.name), k=K)

    def run_spark() -> tuple[float, Path, int]:
        dst = tmp / "spark-out"
        t0 = time.perf_counter()
        df = spark.read.schema("user string, items array<string>").json(str(src))
        parts = df.rdd.getNumPartitions()
        df.mapInPandas(score, frames.spark_schema()).write.mode("overwrite").json(str(dst))
        return time.perf_counter() - t0, dst, parts

    t_cold, spark_dst, parts = run_spark()
    times: dict[str, list[float]] = {"cli": [], "cli_threads_1": [], "spark": []}
    for _ in range(args.repeats):  # in turns, so a busy moment of the machine hits all of them
        times["cli"].append(run_cli()[0])
        times["cli_threads_1"].append(run_cli("--threads", "1")[0])
        times["spark"].append(run_spark()[0])
    spark.stop()

    cli_top = read_jsonl_dir(run_cli()[1])
    spark_top = read_jsonl_dir(spark_dst)
    same = sum(spark_top.get(u) == items for u, items in cli_top.items()) / len(cli_top)
    best = {name: min(ts) for name, ts in times.items()}
    ups = {name: n_users / t for name, t in best.items()}
    ups["spark_cold_first_job"] = n_users / t_cold
    shutil.rmtree(tmp, ignore_errors=True)

    sys.path.insert(0, str(Path(__file__).parent))
    from _common import provenance

    res = {
        **provenance(),
        "dataset": "ml-100k (all users, full histories, jsonl)",
        "users": n_users,
        "events": data.n_interactions,
        "cell": "random init, default sizes (seed 0)",
        "model": cfg.to_dict(),
        "k": K,
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "spark_partitions": parts,
        "spark_session_start_s": t_session,
        "top_k_same_spark_vs_cli": same,
        "seconds_best": best,
        "seconds_all": times,
        "spark_cold_first_job_s": t_cold,
        "users_per_s": ups,
        "ratio_spark_over_cli": ups["spark"] / ups["cli"],
        "ratio_spark_over_cli_threads_1": ups["spark"] / ups["cli_threads_1"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
