"""Catalogs of 10^3..10^6 items: exact top-K against the HNSW index, sampled-softmax training.

    python benchmarks/catalog.py serving [--sizes 1000 10000 100000 1000000]
    python benchmarks/catalog.py libraries [--size 100000]
    python benchmarks/catalog.py memory [--sizes 10000 100000 1000000]
    python benchmarks/catalog.py ml100k --sampled FILE... --ce FILE...

serving: for each catalog size, synthetic sequences with power-law item popularity, a model
trained briefly with sampled softmax, its exact cell and its retrieval cell + index; the engine
alone streams events at batch 1 and 64 (ORT / hnswlib at 1 and 2 threads) through both. ANN
recall@10 twice: the overlap of the two engines' top-10 on the same (first) events, and of the
index's top-10 with the exact top-10 after whole held-out histories.
libraries: hnswlib, faiss (HNSW, IVF-Flat) and usearch on the same trained embeddings and
user vectors: build time, index memory, recall@10 and query time per beam width.
memory: peak RSS of one sampled-softmax epoch per catalog size, in a fresh process each,
minus what the embedding table (weights, gradient, two Adam moments) accounts for.
ml100k: test NDCG@10 of sampled softmax vs full CE per seed, from `recblr train
--metrics-json` files (paired by seed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, provenance, write_result  # noqa: E402

SEQ_LEN = 40
DIM = 64


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def synthetic_sequences(n_items: int, n_users: int, seed: int = 0) -> np.ndarray:
    """[n_users, SEQ_LEN] item ids 1..n_items: each user walks a few topics (blocks of items),
    items within a topic drawn with Zipf popularity, so the catalog overall is power-law."""
    rng = np.random.default_rng(seed)
    n_topics = max(10, n_items // 100)
    topic_of = rng.permutation(n_items)  # item order -> id
    size = n_items // n_topics
    rank_p = 1.0 / np.arange(1, size + 1) ** 1.1
    rank_p /= rank_p.sum()
    topic_p = 1.0 / np.arange(1, n_topics + 1) ** 0.8
    topic_p /= topic_p.sum()
    seqs = np.empty((n_users, SEQ_LEN), dtype=np.int64)
    for u in range(n_users):
        topics = rng.choice(n_topics, size=3, p=topic_p)
        t = topics[rng.integers(0, 3, SEQ_LEN)]
        r = rng.choice(size, size=SEQ_LEN, p=rank_p)
        seqs[u] = topic_of[t * size + r] + 1
    return seqs


def train_briefly(n_items: int, seqs: np.ndarray, negatives: int = 1024, seconds: float = 120.0,
                  users_per_batch: int = 50, sparse: bool = True, lr: float = 1e-3):
    """Sampled-softmax training through the trainer's own step (`recblr.train.train_epoch`,
    optimiser from `make_optimizer`: SparseAdam for the item table when `sparse`), for one pass
    over `seqs` or `seconds`, whichever ends first; returns the model (eval mode) and the stats."""
    import torch

    from recblr.config import ModelConfig, TrainConfig
    from recblr.losses import NegativeSampler, make_loss
    from recblr.model import RecBLR
    from recblr.train import Batch, make_optimizer, train_epoch

    torch.manual_seed(0)
    cfg = TrainConfig(loss="sampled", negatives=negatives, sparse_embeddings=sparse, lr=lr)
    model = RecBLR(ModelConfig(n_items=n_items, dim=DIM))
    opt = make_optimizer(model, cfg)
    sampler = NegativeSampler.build("uniform", n_items)
    gen = torch.Generator().manual_seed(0)
    loss_fn = make_loss("sampled", model.item_emb, gen, negatives, sampler)
    empty = np.zeros(0, dtype=np.int64)
    batches = [Batch(items=np.ascontiguousarray(x[:, :-1]), lengths=np.full(len(x), SEQ_LEN - 1, dtype=np.int64),
                     targets=np.ascontiguousarray(x[:, 1:]), context=[empty] * len(x))
               for x in (seqs[b : b + users_per_batch] for b in range(0, len(seqs), users_per_batch))]
    losses: list[float] = []
    last = [0.0, 0]
    t0 = time.perf_counter()

    def on_step(tally) -> bool:
        losses.append((tally.loss_sum - last[0]) / (tally.pairs - last[1]))
        last[:] = [tally.loss_sum, tally.pairs]
        return time.perf_counter() - t0 > seconds

    tally = train_epoch(model, opt, batches, loss_fn, torch.device("cpu"), on_step)
    model.sparse_item_gradients(False)
    model.eval()
    return model, {"steps": tally.steps, "of_steps": len(batches), "seconds": time.perf_counter() - t0,
                   "first_loss": losses[0], "first10_loss": float(np.mean(losses[:10])),
                   "last10_loss": float(np.mean(losses[-10:])), "negatives": negatives,
                   "pairs_per_step": users_per_batch * (SEQ_LEN - 1),
                   "optimizer": "SparseAdam (item table) + Adam" if sparse else "Adam"}


def stream(engine, users: list[str], items: list[str], batch: int, budget_s: float, max_events: int):
    """Events through engine.step in batches of distinct users; per-call latency in ms."""
    lat, answers, n = [], [], 0
    t_start = time.perf_counter()
    while n + batch <= min(len(users), max_events):
        t0 = time.perf_counter()
        out = engine.step(users[n : n + batch], items[n : n + batch], k=10)
        lat.append((time.perf_counter() - t0) * 1e3)
        answers.extend(r.items for r in out)
        n += batch
        if time.perf_counter() - t_start > budget_s and len(lat) >= 5:
            break
    wall = time.perf_counter() - t_start
    lat = np.array(lat)
    return {"events": n, "events_per_s": n / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "calls": len(lat)}, answers


def set_search_ef(ann_path: Path, ef: int) -> None:
    """Rewrite the index description's search beam: what a deployment changes to trade recall
    for speed without rebuilding the index (the runtime reads it on open)."""
    from recblr.runtime.ann import index_paths

    desc = index_paths(ann_path)[1]
    d = json.loads(desc.read_text())
    d["ef_search"] = ef
    desc.write_text(json.dumps(d))


def serving_one(n_items: int, work: Path, args) -> tuple[dict, Path, Path]:
    """Train, export both cells, stream through the engine at every (threads, batch, ef); the
    cells stay in `work` for the server stage."""
    import torch

    from recblr.export.ann import export_retrieval, item_vectors, recall_at_10, user_vectors
    from recblr.export.onnx_export import export_cell, weights_sha256
    from recblr.runtime.ann import AnnTopK
    from recblr.runtime.engine import Engine

    torch.set_num_threads(1)
    n_users = args.users
    seqs = synthetic_sequences(n_items, n_users, seed=n_items)
    model, train_stats = train_briefly(n_items, seqs, seconds=args.train_seconds, lr=args.lr)
    print(f"  trained: {train_stats}", flush=True)
    ids = [str(i) for i in range(n_items + 1)]
    exact_path = work / f"exact_{n_items}.onnx"
    ann_path = work / f"ann_{n_items}" / "cell.onnx"
    t0 = time.perf_counter()
    export_cell(model, exact_path, top_k=10, item_ids=ids)
    export_s = time.perf_counter() - t0
    _, build = export_retrieval(model, ids, ann_path, top_k=10, opset=18, ef_search=args.efs[0],
                                ef_construction=args.ef_construction)
    print(f"  index built in {build.seconds:.0f}s", flush=True)
    sha, users_q, items_v = weights_sha256(model), user_vectors(model, list(seqs[: args.recall_users])), item_vectors(model)
    del model
    held_out, index_rss = {}, 0
    for ef in args.efs:
        set_search_ef(ann_path, ef)
        rss0 = rss_bytes()
        ann_index = AnnTopK.open(ann_path, sha, n_items, DIM, threads=1)
        index_rss = max(index_rss, rss_bytes() - rss0)  # the loaded index, as the runtime holds it
        held_out[str(ef)] = recall_at_10(ann_index, users_q, items_v)
        del ann_index
    print(f"  held-out recall@10 by ef: {held_out}", flush=True)
    # Events: each user continues their own sequence; distinct users within a batch.
    rng = np.random.default_rng(1)
    order = rng.permutation(n_users)
    users = [f"u{u}" for u in order]
    items = [str(seqs[u, -1]) for u in order]
    res: dict = {"n_items": n_items, "users": n_users, "train": train_stats, "export_exact_s": export_s,
                 "index": {"build_s": build.seconds, "loaded_rss_bytes": index_rss,
                           "bytes_on_disk": build.bytes_on_disk, **build.info.to_json()},
                 "disk_bytes": {"exact_cell": exact_path.stat().st_size,
                                "ann_cell": ann_path.stat().st_size,
                                "ann_index": build.bytes_on_disk},
                 "held_out_recall@10": held_out, "held_out_users": args.recall_users,
                 "runs": []}
    for threads in args.threads:
        for batch in (1, 64):
            max_events = args.max_events if batch == 64 else args.max_events // 4
            for ef in args.efs:  # exact streams again before each ef: the ratio is taken seconds apart
                set_search_ef(ann_path, ef)
                # fresh engines (empty user states) for both, so their answers compare the same states
                exact = Engine(exact_path, providers="cpu", threads=threads)
                ann = Engine(ann_path, providers="cpu", threads=threads)
                e_stats, e_ans = stream(exact, users, items, batch, args.budget, max_events)
                a_stats, a_ans = stream(ann, users, items, batch, args.budget, max_events)
                del exact, ann
                m = min(len(e_ans), len(a_ans))
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(a_ans[:m], e_ans[:m], strict=True)]))
                row = {"threads": threads, "batch": batch, "ef": ef, "exact": e_stats, "ann": a_stats,
                       "ann_recall@10": recall, "recall_events": m,
                       "ann_speedup": a_stats["events_per_s"] / e_stats["events_per_s"]}
                res["runs"].append(row)
                print(f"  n={n_items} threads={threads} batch={batch} ef={ef}: exact {e_stats['events_per_s']:.0f}/s "
                      f"p50 {e_stats['p50_ms']:.2f}ms | ann {a_stats['events_per_s']:.0f}/s p50 "
                      f"{a_stats['p50_ms']:.2f}ms | x{row['ann_speedup']:.1f} | recall@10 {recall:.3f}", flush=True)
    return res, exact_path, ann_path


def serve_throughput(cells: dict[str, Path], work: Path, clients: int, seconds: float, rounds: int) -> dict:
    """Each cell behind `recblr-serve` (its defaults, durable SQLite state), driven in turn by
    benchmarks/serve.py's load generator (`clients` keep-alive connections, each streaming
    events for its own users as fast as answers come); the order alternates between rounds."""
    from serve import drive, start_cell_server, stop

    servers = {}
    try:
        for name, cell in cells.items():
            servers[name] = start_cell_server(cell, work / f"state_{name}.sqlite")
        drive(servers[next(iter(cells))][1], clients, 1.0)  # warm-up of the first; each round has its own
        out: dict = {name: [] for name in cells}
        names = list(cells)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                row = drive(servers[name][1], clients, seconds)
                out[name].append(row)
                print(f"  serve {name}: {row['events_per_s']:.0f} events/s p50 {row['p50_ms']:.1f}ms "
                      f"p99 {row['p99_ms']:.1f}ms errors {row['errors']}", flush=True)
    finally:
        for p, _ in servers.values():
            stop(p)
    return {"clients": clients, "seconds": seconds, "rounds": rounds, "load_generator": "benchmarks/serve.py drive()",
            "by_cell": {n: {"rows": rows, "median_events_per_s": float(np.median([x["events_per_s"] for x in rows])),
                            "median_p50_ms": float(np.median([x["p50_ms"] for x in rows])),
                            "median_p99_ms": float(np.median([x["p99_ms"] for x in rows]))}
                        for n, rows in out.items()}}


def small_exact_cell(work: Path, n_items: int = 1349) -> Path:
    """An ML-100K-sized exact cell (briefly trained the same way) for the serving-path reference."""
    import torch

    from recblr.export.onnx_export import export_cell

    torch.set_num_threads(1)
    seqs = synthetic_sequences(n_items, 2000, seed=n_items)
    model, _ = train_briefly(n_items, seqs, seconds=20.0)
    path = work / f"exact_{n_items}.onnx"
    export_cell(model, path, top_k=10, item_ids=[str(i) for i in range(n_items + 1)])
    return path


def cmd_serving(args) -> None:
    out = {**provenance(), "efs": args.efs, "ef_construction": args.ef_construction, "seq_len": SEQ_LEN,
           "dim": DIM, "train_seconds": args.train_seconds, "lr": args.lr, "sizes": []}
    name = args.name
    with tempfile.TemporaryDirectory(prefix="recblr-catalog-") as tmp:
        work = Path(tmp)
        for n in args.sizes:
            print(f"catalog {n} items", flush=True)
            res, exact_path, ann_path = serving_one(n, work, args)
            res["load_average_after"] = os.getloadavg()
            out["sizes"].append(res)
            write_result(name, out)  # keep what finished if a later size is stopped
            if n == max(args.sizes) and args.serve_clients:
                ef = chosen_ef(res)
                set_search_ef(ann_path, ef)
                cells = {"exact_1349": small_exact_cell(work), f"ann_{n}_ef{ef}": ann_path}
                out["serve"] = serve_throughput(cells, work, args.serve_clients, args.serve_seconds, args.serve_rounds)
                out["serve"]["ann_ef"] = ef
                out["serve"]["load_average_after"] = os.getloadavg()
                write_result(name, out)
            subprocess.run(["rm", "-rf", str(exact_path), str(ann_path.parent)], check=False)
    plot(out, RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.json")


def chosen_ef(size: dict) -> int | None:
    """The smallest beam whose held-out recall@10 reaches 0.95 (else the widest measured)."""
    recall = {int(k): v for k, v in size["held_out_recall@10"].items()}
    ok = [ef for ef in sorted(recall) if recall[ef] >= 0.95]
    return ok[0] if ok else max(recall)


def plot(result: dict, path: Path) -> None:
    """events/s against catalog size; ANN at each size's chosen beam (`chosen_ef`)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, style in (("exact", "-o"), ("ann", "--s")):
        for batch in (1, 64):
            xs, ys = [], []
            for s in result["sizes"]:
                rows = [r for r in s["runs"] if r["batch"] == batch
                        and (method == "exact" or r.get("ef", chosen_ef(s)) == chosen_ef(s))]
                if rows:
                    xs.append(s["n_items"])
                    ys.append(max(r[method]["events_per_s"] for r in rows))
            ax.plot(xs, ys, style, label=f"{method} top-10, batch {batch}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog size (items)")
    ax.set_ylabel("events/s (engine alone; ANN at its chosen ef)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cmd_libraries(args) -> None:
    import faiss
    import hnswlib
    import torch
    import usearch
    from usearch.index import Index as UIndex

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    n = args.size
    seqs = synthetic_sequences(n, args.users, seed=n)
    model, train_stats = train_briefly(n, seqs, seconds=args.train_seconds)
    from recblr.export.ann import item_vectors, user_vectors

    X = item_vectors(model)
    Q = user_vectors(model, [s for s in seqs[: args.queries]])
    exact = np.argsort(-(Q @ X.T), axis=1)[:, :10]

    def recall(found) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact, strict=True)]))

    rows = []

    def measure(name, build, search, beams):
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        idx = build()
        build_s = time.perf_counter() - t0
        mem = rss_bytes() - rss0
        for beam in beams:
            t0 = time.perf_counter()
            found = search(idx, beam)
            q_ms = (time.perf_counter() - t0) * 1e3 / len(Q)
            rows.append({"library": name, "beam": beam, "build_s": build_s, "rss_delta_bytes": mem,
                         "recall@10": recall(found), "query_ms": q_ms})
            print(f"  {name:12s} beam {beam:4d}: build {build_s:.1f}s, +{mem / 1e6:.0f} MB, recall@10 "
                  f"{rows[-1]['recall@10']:.3f}, {q_ms:.3f} ms/query", flush=True)
        del idx

    beams = (32, 64, 128, 256)

    def hb():
        p = hnswlib.Index(space="ip", dim=DIM)
        p.init_index(max_elements=n, M=16, ef_construction=100, random_seed=0)
        p.add_items(X, num_threads=1)
        return p

    def hs(p, ef):
        p.set_ef(ef)
        return p.knn_query(Q, k=10, num_threads=1)[0]

    def fb():
        f = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
        f.hnsw.efConstruction = 100
        f.add(X)
        return f

    def fs(f, ef):
        f.hnsw.efSearch = ef
        return f.search(Q, 10)[1]

    def ivb():
        nlist = int(4 * np.sqrt(n))
        f = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
        f.train(X[np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)])
        f.add(X)
        return f

    def ivs(f, nprobe):
        f.nprobe = nprobe
        return f.search(Q, 10)[1]

    def ub():
        u = UIndex(ndim=DIM, metric="ip", connectivity=16, expansion_add=100)
        u.add(np.arange(n), X, threads=1)
        return u

    def us(u, ef):
        u.expansion_search = ef
        return u.search(Q, 10, threads=1).keys

    measure("hnswlib", hb, hs, beams)
    measure("faiss-hnsw", fb, fs, beams)
    measure("faiss-ivfflat", ivb, ivs, (8, 32, 128))
    measure("usearch", ub, us, beams)
    out = {**provenance(), "n_items": n, "queries": len(Q), "train": train_stats, "threads": 1,
           "versions": {"hnswlib": getattr(hnswlib, "__version__", "0.8"), "faiss": faiss.__version__,
                        "usearch": usearch.__version__},
           "params": "HNSW M=16 ef_construction=100 (all three); IVF-Flat nlist=4*sqrt(n)",
           "rows": rows}
    write_result(args.name, out)


MEMORY_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
from catalog import synthetic_sequences, train_briefly
n, users = int(sys.argv[1]), int(sys.argv[2])
seqs = synthetic_sequences(n, users, seed=n)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
_, stats = train_briefly(n, seqs, seconds=1e9, sparse=sys.argv[4] == "sparse")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"n_items": n, "rss_before_bytes": base, "peak_rss_bytes": peak, "train": stats}))
"""


def cmd_memory(args) -> None:
    rows = []
    for n in args.sizes:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        mode = "sparse" if args.sparse else "dense"
        proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n), str(args.users),
                               str(Path(__file__).resolve().parent), mode], capture_output=True, text=True,
                              env=env, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        table = (n + 1) * DIM * 4
        # what the table itself must hold: weights and two Adam moments, plus a dense gradient
        # unless the gradient is sparse (SparseAdam keeps its moments dense, table-sized)
        copies = 3 if args.sparse else 4
        row["embedding_table_bytes"] = table
        row["table_copies"] = copies
        row["peak_minus_table_copies_bytes"] = row["peak_rss_bytes"] - copies * table
        rows.append(row)
        print(f"  n={n}: peak {row['peak_rss_bytes'] / 1e6:.0f} MB, table x{copies} {copies * table / 1e6:.0f} MB, "
              f"rest {row['peak_minus_table_copies_bytes'] / 1e6:.0f} MB", flush=True)
    write_result(args.name, {**provenance(), "users": args.users, "seq_len": SEQ_LEN, "negatives": 1024,
                             "gradient": "sparse (SparseAdam for the table)" if args.sparse else "dense (Adam)",
                             "rows": rows})


def cmd_ml100k(args) -> None:
    def load(files):
        out = {}
        for f in files:
            d = json.loads(Path(f).read_text())
            seed = d.get("train_config", {}).get("seed")
            if seed is None:  # `recblr train --metrics-json` files carry no config: seed from the name
                seed = re.search(r"seed(\d+)", Path(f).name).group(1)
            out[int(seed)] = d["test"]["stream"]["ndcg@10"]
        return out

    sampled, ce = load(args.sampled), load(args.ce)
    seeds = sorted(set(sampled) & set(ce))
    diff = np.array([sampled[s] - ce[s] for s in seeds])
    out = {**provenance(), "metric": "test NDCG@10, stream mode", "seeds": seeds,
           "sampled": [sampled[s] for s in seeds], "ce": [ce[s] for s in seeds],
           "mean_sampled": float(np.mean([sampled[s] for s in seeds])),
           "mean_ce": float(np.mean([ce[s] for s in seeds])),
           "mean_diff": float(diff.mean()),
           "sd_ce_over_seeds": float(np.std([ce[s] for s in seeds], ddof=1)) if len(seeds) > 1 else None,
           "se_diff": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None,
           "sampled_files": args.sampled, "ce_files": args.ce, "note": args.note}
    write_result(args.name, out)
    print(json.dumps(out, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    s = sub.add_parser("serving")
    s.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    s.add_argument("--users", type=int, default=10_000)
    s.add_argument("--train-seconds", type=float, default=240.0)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--efs", type=int, nargs="+", default=[32, 64, 128, 256], help="search beams, ascending")
    s.add_argument("--ef-construction", type=int, default=100)
    s.add_argument("--threads", type=int, nargs="+", default=[1])
    s.add_argument("--serve-clients", type=int, default=64, help="0: skip the recblr-serve stage")
    s.add_argument("--serve-seconds", type=float, default=5.0)
    s.add_argument("--serve-rounds", type=int, default=2)
    s.add_argument("--budget", type=float, default=3.0, help="seconds per timed stream")
    s.add_argument("--max-events", type=int, default=4096)
    s.add_argument("--recall-users", type=int, default=500, help="whole histories for the held-out recall")
    s.add_argument("--name", default="catalog")
    s = sub.add_parser("libraries")
    s.add_argument("--size", type=int, default=100_000)
    s.add_argument("--users", type=int, default=10_000)
    s.add_argument("--queries", type=int, default=500)
    s.add_argument("--train-seconds", type=float, default=60.0)
    s.add_argument("--name", default="catalog_libraries")
    s = sub.add_parser("memory")
    s.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.add_argument("--users", type=int, default=2_000)
    s.add_argument("--sparse", action="store_true", help="train with sparse_embeddings (SparseAdam for the table)")
    s.add_argument("--name", default="catalog_memory")
    s = sub.add_parser("ml100k")
    s.add_argument("--sampled", nargs="+", required=True)
    s.add_argument("--ce", nargs="+", required=True)
    s.add_argument("--note", default="")
    s.add_argument("--name", default="catalog_sampled_ml100k")
    args = p.parse_args()
    {"serving": cmd_serving, "libraries": cmd_libraries, "memory": cmd_memory, "ml100k": cmd_ml100k}[args.stage](args)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
