"""What a hot reload costs live traffic, and how fast the sweep carries stored users over.

    OMP_NUM_THREADS=1 python benchmarks/reload.py [--seconds 12] [--rounds 3] [--users 1000]
        [--out benchmarks/results/reload.json]

One server (`recblr-serve`, SQLite state, micro-batching on) holds `--users` stored users with
a 100-item history each, plus the load's own users. Each round drives the same load twice,
16 keep-alive connections sending events as fast as answers come back (the load generator
of benchmarks/serve.py, in its own process): once without a reload, once with a
`POST /admin/reload` a quarter of the way in, to the other of two cells (other weights, and
the second has 100 more items), so every stored user is migrated by replaying its history
while the load runs. Reported per round and as medians: events/s and p99 latency of both
runs and their ratio (with reload / without), failed requests, and the sweep's migrated
users per second (from /metrics: users migrated over the time until none is pending).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve as sb  # noqa: E402  (its load generator and server starter)
from _common import provenance, write_result  # noqa: E402

HISTORY = 100
NEW_ITEMS = 100


def cells(tmp: Path) -> tuple[Path, Path]:
    """Cell A (ML-100K's catalog size) and cell B (other weights, 100 more items)."""
    import torch

    from recblr.config import ModelConfig
    from recblr.export.onnx_export import export_cell
    from recblr.model import RecBLR

    ids_a = ["<pad>"] + [str(i) for i in range(1, sb.N_ITEMS + 1)]
    ids_b = ids_a + [f"new{i}" for i in range(NEW_ITEMS)]
    out = []
    for seed, ids, name in ((0, ids_a, "a"), (1, ids_b, "b")):
        torch.manual_seed(seed)
        model = RecBLR(ModelConfig(n_items=len(ids) - 1)).eval()
        out.append(export_cell(model, tmp / f"{name}.onnx", top_k=sb.K, item_ids=ids))
    return out[0], out[1]


def prefill(c: httpx.Client, users: int) -> None:
    rng = np.random.default_rng(0)
    batch: list[dict] = []
    for u in range(users):
        for it in rng.integers(1, sb.N_ITEMS + 1, HISTORY):
            batch.append({"user": f"s{u}", "item": str(int(it))})
        if len(batch) >= 5000 or u == users - 1:
            c.post("/v1/events", json={"events": batch}).raise_for_status()
            batch = []


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def reload_during(port: int, cell: Path, after: float, out: dict) -> None:
    """Wait `after` seconds, reload to `cell`, then time the sweep until nothing is pending."""
    time.sleep(after)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        before = _metric(c.get("/metrics").text, "recblr_users_migrated_total")
        t0 = time.perf_counter()
        r = c.post("/admin/reload", json={"onnx": str(cell)})
        out["reload_status"] = r.status_code
        out["reload_answer_s"] = time.perf_counter() - t0
        while True:
            m = c.get("/metrics").text
            if _metric(m, "recblr_migration_pending_users") == 0:
                break
            time.sleep(0.02)
        out["sweep_s"] = time.perf_counter() - t0
        out["migrated"] = _metric(m, "recblr_users_migrated_total") - before
        out["migrated_per_s"] = out["migrated"] / out["sweep_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--out", default="reload")
    args = p.parse_args()
    load_start = os.getloadavg()  # the machine is shared: the noise is stated with the figures
    tmp = Path(tempfile.mkdtemp(prefix="recblr-reload-bench-"))
    a, b = cells(tmp)
    proc, port = sb.start_cell_server(a, tmp / "state.db", "--log-level", "error")
    rounds = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
            prefill(c, args.users)
        sb.prefill_cell(port, args.clients)
        target = b
        for r in range(args.rounds):
            steady = sb.drive(port, args.clients, args.seconds)
            rel: dict = {}
            t = threading.Thread(target=reload_during, args=(port, target, args.seconds / 4, rel))
            t.start()
            during = sb.drive(port, args.clients, args.seconds)
            t.join()
            rounds.append({
                "round": r, "to": target.name, "steady": steady, "with_reload": during,
                "reload": rel,
                "events_per_s_ratio": during["events_per_s"] / steady["events_per_s"],
                "p99_ratio": during["p99_ms"] / steady["p99_ms"],
            })  # fmt: skip
            print(rounds[-1], flush=True)
            target = a if target == b else b
    finally:
        sb.stop(proc)

    def med(f):
        return float(np.median([f(x) for x in rounds]))

    payload = {
        **provenance(),
        "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
        "setup": {
            "clients": args.clients, "seconds": args.seconds, "stored_users": args.users,
            "history": HISTORY, "cell_items": [sb.N_ITEMS, sb.N_ITEMS + NEW_ITEMS],
            "server": "recblr-serve --state SQLITE (defaults: --max-batch 256 --max-wait-ms 2)",
        },
        "rounds": rounds,
        "median": {
            "events_per_s_steady": med(lambda x: x["steady"]["events_per_s"]),
            "events_per_s_with_reload": med(lambda x: x["with_reload"]["events_per_s"]),
            "events_per_s_ratio": med(lambda x: x["events_per_s_ratio"]),
            "p99_ms_steady": med(lambda x: x["steady"]["p99_ms"]),
            "p99_ms_with_reload": med(lambda x: x["with_reload"]["p99_ms"]),
            "p99_ratio": med(lambda x: x["p99_ratio"]),
            "sweep_migrated_users_per_s": med(lambda x: x["reload"]["migrated_per_s"]),
            "failed_requests": sum(x["steady"]["errors"] + x["with_reload"]["errors"] for x in rounds),
        },
    }  # fmt: skip
    print(write_result(args.out, payload))
    print(payload["median"])


if __name__ == "__main__":
    main()
