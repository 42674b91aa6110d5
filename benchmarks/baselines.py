"""RecBLR against SASRec and GRU4Rec on ML-100K, in one harness: accuracy over seeds, training
cost and per-event cost side by side.

    python benchmarks/baselines.py runs   [--models ...] [--seeds ...]   # resumable, one process per run
    python benchmarks/baselines.py run    MODEL SEED                      # one run (what `runs` starts)
    python benchmarks/baselines.py train-cost                             # s/epoch + peak memory, 3 models
    python benchmarks/baselines.py event-cost                             # one new event at 10/100/1000
    python benchmarks/baselines.py report                                 # baselines.json + baselines.png

The same data loader and split (recblr.data), the same (prefix, next item) pairs (every
position of the max_len=200 windows of recblr.train.sequence_windows carries a full-catalog
cross-entropy loss), the same evaluator (recblr.evaluate.history_ranks: full ranking, rank =
1 + #strictly higher), Adam at lr 1e-3, batches of ~2048 pairs, early stopping on validation
NDCG@10 with patience 10. RecBLR is trained by recblr.train.train itself; the baselines by
`fit` below, which is that loop with the model swapped. How a window that does not start
at the user's first item sees the items before it is each model's own: RecBLR and GRU4Rec
start from the state those items leave; SASRec, which has no state and at most 200
positions, gets the items before the window as context up to 200 positions in all, with
the loss on the window's own positions only.

Each run writes results/baselines_runs/MODEL_seedSEED.json (per-user ranks included, for the
paired tests); `runs` skips runs whose JSON exists, so an interrupted set resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import RESULTS, median_ms, provenance, write_result  # noqa: E402

from recblr.baselines import GRU4Rec, GRU4RecConfig, SASRec, SASRecConfig  # noqa: E402
from recblr.config import ModelConfig, TrainConfig  # noqa: E402
from recblr.data import SequenceData, load_dataset  # noqa: E402
from recblr.evaluate import evaluate, history_ranks, ndcg_per_user, pad_right  # noqa: E402
from recblr.model import RecBLR  # noqa: E402
from recblr.train import carried_states, length_batches, sequence_windows, train  # noqa: E402

MODELS = ("recblr", "sasrec", "gru4rec")
SEEDS = (2024, 1, 2, 3, 4)
RUNS = RESULTS / "baselines_runs"
MAX_LEN = 200
HISTORY = (10, 100, 1000)
# Evaluation modes each model can be asked for; the first is the one early stopping watches
# (RecBLR's default `stream`; SASRec cannot stream past its positions).
MODES = {"recblr": ("stream", "window"), "gru4rec": ("stream", "window"), "sasrec": ("window",)}


def build(name: str, n_items: int, max_len: int = MAX_LEN):
    if name == "recblr":
        return RecBLR(ModelConfig(n_items=n_items))
    if name == "sasrec":
        return SASRec(SASRecConfig(n_items=n_items, max_len=max_len))
    if name == "gru4rec":
        return GRU4Rec(GRU4RecConfig(n_items=n_items))
    raise SystemExit(f"unknown model {name!r}; use one of {', '.join(MODELS)}")


def context(model, window: tuple[int, int, int], max_len: int) -> int:
    """Items before the window that SASRec re-reads (loss off), up to max_len positions in all;
    the recurrent models read none (they start from the state those items leave)."""
    _, start, n = window
    return min(start, max_len - n) if isinstance(model, SASRec) else 0


def window_batch(model, seqs: list[np.ndarray], ws: list[tuple[int, int, int]], max_len: int, device):
    """(hidden, targets) of every pair in the windows `ws` = [(user, start, n)]."""
    if isinstance(model, SASRec):
        ctx = [context(model, w, max_len) for w in ws]
        items, lens = pad_right([seqs[u][s - c : s + n] for (u, s, n), c in zip(ws, ctx, strict=True)], device)
        tgts, _ = pad_right([seqs[u][s - c + 1 : s + n + 1] for (u, s, n), c in zip(ws, ctx, strict=True)], device)
        h, _ = model(items, None, lens)
        pos = torch.arange(items.shape[1], device=device).view(1, -1)
        mask = (pos < lens.view(-1, 1)) & (pos >= torch.as_tensor(ctx, device=device).view(-1, 1))
    else:
        state = carried_states(model, [seqs[u][:s] for u, s, _ in ws], device)
        items, lens = pad_right([seqs[u][s : s + n] for u, s, n in ws], device)
        tgts, _ = pad_right([seqs[u][s + 1 : s + n + 1] for u, s, n in ws], device)
        h, _ = model(items, state, lens)
        mask = torch.arange(items.shape[1], device=device).view(1, -1) < lens.view(-1, 1)
    return h[mask], tgts[mask]


def train_epoch(model, opt, train_seqs, rng: np.random.Generator, cfg: TrainConfig, device) -> tuple[float, int]:
    """One pass over every (prefix, next item) pair; (mean loss, pairs). Batches hold about
    `cfg.batch_size` encoded positions (pairs, plus SASRec's context items)."""
    model.train()
    windows = sequence_windows(train_seqs, cfg.max_len)
    lengths = np.array([w[2] + context(model, w, cfg.max_len) for w in windows])
    total, pairs = 0.0, 0
    for batch in length_batches(lengths, cfg.batch_size, rng):
        h, tgts = window_batch(model, train_seqs, [windows[i] for i in batch], cfg.max_len, device)
        loss = F.cross_entropy(model.item_scores(h), tgts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(tgts)
        pairs += len(tgts)
    return total / max(1, pairs), pairs


def fit(name: str, data: SequenceData, cfg: TrainConfig, log=print) -> tuple[torch.nn.Module, list[dict]]:
    """recblr.train.train's loop for a baseline: best validation NDCG@10, patience, restore."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build(name, data.n_items, cfg.max_len).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    train_seqs = data.train_sequences()
    select = MODES[name][0]
    best, best_state, bad, history = -1.0, None, 0, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss, pairs = train_epoch(model, opt, train_seqs, rng, cfg, device)
        seconds = time.perf_counter() - t0
        score = evaluate(model, data, "valid", (select,), cfg.max_len, cfg.eval_batch_size)[select]["ndcg@10"]
        history.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": score, "seconds": seconds, "pairs": pairs})
        improved = score > best
        log(f"{name} epoch {epoch:3d} | loss {loss:.4f} | valid NDCG@10 {score:.4f} ({select}) | {seconds:.1f}s"
            f"{' *' if improved else ''}")
        if improved:
            best, bad, best_state = score, 0, copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                log(f"early stop: no improvement for {cfg.patience} epochs")
                break
    model.load_state_dict(best_state)
    return model.eval(), history


def ranks(model, data: SequenceData, modes: tuple[str, ...], max_len: int) -> dict:
    """{split: {mode: per-user rank list}} for the paired tests."""
    out = {}
    for split in ("valid", "test"):
        hist, tgt = data.split_histories(split)
        out[split] = {m: history_ranks(model, hist, tgt, m, max_len).tolist() for m in modes}
    return out


def run_one(name: str, seed: int, max_epochs: int) -> Path:
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    cfg = TrainConfig(seed=seed, epochs=max_epochs, device="cpu", select_mode=MODES[name][0])
    t0 = time.perf_counter()
    if name == "recblr":
        result = train(data, ModelConfig(n_items=data.n_items), cfg)
        model, history = result.model.eval(), result.history
    else:
        model, history = fit(name, data, cfg)
    wall = time.perf_counter() - t0
    r = ranks(model, data, MODES[name], cfg.max_len)
    best = max(history, key=lambda row: row["valid_ndcg@10"])
    payload = {
        **provenance(),
        "model": name,
        "seed": seed,
        "model_config": model.cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_config": cfg.to_dict(),
        "wall_seconds": wall,
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "stopped_early": len(history) < max_epochs,
        "seconds_per_epoch": statistics.mean(row["seconds"] for row in history),
        "history": history,
        "ranks": r,
    }
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"{name}_seed{seed}.json"
    path.write_text(json.dumps(payload) + "\n")
    return path


def cmd_runs(args) -> None:
    for seed in args.seeds:
        for name in args.models:
            path = RUNS / f"{name}_seed{seed}.json"
            if path.exists():
                print(f"{path.name}: done, skipped", flush=True)
                continue
            print(f"{path.name}: training", flush=True)
            subprocess.run([sys.executable, __file__, "run", name, str(seed), "--max-epochs", str(args.max_epochs)],
                           check=True)


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def cmd_epoch_cost(args) -> None:
    """One model, fresh process: seconds per training epoch and the memory training adds."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset("ml-100k")
    cfg = TrainConfig(seed=0, device=args.device)
    torch.manual_seed(0)
    model = build(args.model, data.n_items).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    train_seqs = data.train_sequences()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_bytes(device) if device.type == "cpu" else torch.cuda.memory_allocated(device)
    seconds = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        train_epoch(model, opt, train_seqs, rng, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    print(json.dumps({"model": args.model, "epoch_seconds": seconds,
                      "peak_train_bytes": peak_bytes(device) - before}))  # fmt: skip


def cmd_train_cost(args) -> None:
    rows = {}
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "epoch-cost", name, "--epochs", str(args.epochs),
                              "--device", args.device, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout  # fmt: skip
        rows[name] = json.loads(out.strip().splitlines()[-1])
        print(rows[name], flush=True)
    payload = {**provenance(), "device": args.device, "threads": args.threads, "env": allocator_env(),
               "memory": "peak RSS growth of a fresh process over its training epochs (CPU) or "
                         "torch.cuda.max_memory_allocated above the model (CUDA)",
               "models": rows}  # fmt: skip
    print(write_result(args.name, payload))


def allocator_env() -> dict:
    """glibc settings that change the cost of fresh tensors above ~128 KB (see benchmarks/scan.py)."""
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


@torch.no_grad()
def event_costs(n_items: int, batch: int, budget_s: float) -> dict:
    """Milliseconds to fold one new event into the hidden vector, by model and history length.

    Recurrent models: one step from the state (independent of the history length). SASRec:
    re-encode the history plus the event (its last max_len items), or extend a key/value
    cache; `sasrec_1024` is the same network with 1024 positions (untrained, cost only), so
    that it can see a 1000-event history at all. Scoring the catalog is the same matmul for
    all three and is reported once (`score_catalog`).
    """
    from recblr.export import build_cell

    torch.manual_seed(0)
    recblr = RecBLR(ModelConfig(n_items=n_items)).eval()
    cell = build_cell(recblr, top_k=10)
    gru = GRU4Rec(GRU4RecConfig(n_items=n_items)).eval()
    sas = {"sasrec": SASRec(SASRecConfig(n_items=n_items)).eval(),
           "sasrec_1024": SASRec(SASRecConfig(n_items=n_items, max_len=1024)).eval()}  # fmt: skip
    item = torch.randint(1, n_items + 1, (batch,))
    rstate = torch.randn(batch, recblr.cfg.state_size)
    gstate = torch.randn(batch, gru.cfg.dim)
    h = torch.randn(batch, recblr.cfg.dim)
    out: dict = {"score_catalog": median_ms(lambda: recblr.item_scores(h), budget_s=budget_s)}
    out["recblr_step"] = {L: median_ms(lambda: cell.step(item, rstate), budget_s=budget_s) for L in HISTORY}
    out["gru4rec_step"] = {L: median_ms(lambda: gru.step(item, gstate), budget_s=budget_s) for L in HISTORY}
    for key, m in sas.items():
        out[f"{key}_reencode"], out[f"{key}_kv_cache"] = sasrec_costs(m, n_items, item, budget_s)
    return out


def sasrec_costs(m: SASRec, n_items: int, item: torch.Tensor, budget_s: float) -> tuple[dict, dict]:
    """Per history length: re-encode the (last max_len of the) history plus the event, and
    extend a key/value cache of the history (None once the history outgrows max_len: the
    window slides, every position shifts, the cache is stale)."""
    batch = item.shape[0]
    reenc, kv = {}, {}
    for L in HISTORY:
        seen = min(L + 1, m.cfg.max_len)
        items = torch.randint(1, n_items + 1, (batch, seen))
        lens = torch.full((batch,), seen, dtype=torch.long)
        reenc[L] = median_ms(lambda items=items, lens=lens: m.last_hidden(items, lens), budget_s=budget_s)
        kv[L] = None
        if L < m.cfg.max_len:
            _, cache = m.prefill(items[:, :L])
            kv[L] = median_ms(lambda cache=cache, L=L: m.step(item, cache, L), budget_s=budget_s)
    return reenc, kv


def cmd_event_cost(args) -> None:
    torch.set_num_threads(args.threads)
    data = load_dataset("ml-100k")
    results = {str(b): event_costs(data.n_items, b, args.budget) for b in args.batches}
    for b, rows in results.items():
        print(f"batch {b}")
        for key, v in rows.items():
            print(f"  {key:22s} {v}")
    payload = {**provenance(), "n_items": data.n_items, "threads": args.threads, "env": allocator_env(),
               "unit": "milliseconds per new event (median), PyTorch eager, no grad",
               "history_lengths": list(HISTORY), "by_batch": results}  # fmt: skip
    print(write_result(args.name, payload))


def _se(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def paired(diff: np.ndarray) -> dict:
    se = _se(diff)
    return {"diff": float(diff.mean()), "se": se, "z": float(diff.mean() / se) if se > 0 else 0.0}


def load_runs() -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {m: {} for m in MODELS}
    for path in RUNS.glob("*_seed*.json"):
        d = json.loads(path.read_text())
        runs[d["model"]][d["seed"]] = d
    return {m: dict(sorted(by_seed.items(), key=lambda kv: SEEDS.index(kv[0]) if kv[0] in SEEDS else 99))
            for m, by_seed in runs.items()}


def per_user_ndcg(runs: dict[int, dict], split: str, mode: str) -> np.ndarray:
    """(seeds, users) NDCG@10."""
    return np.stack([ndcg_per_user(np.array(r["ranks"][split][mode]), 10) for r in runs.values()])


def summarize(runs: dict[str, dict[int, dict]]) -> dict:
    from recblr.evaluate import metrics_from_ranks

    out: dict = {"models": {}, "paired_vs_recblr": {}}
    for name, by_seed in runs.items():
        if not by_seed:
            continue
        row: dict = {"seeds": sorted(by_seed), "parameters": next(iter(by_seed.values()))["parameters"]}
        for mode in MODES[name]:
            for split in ("valid", "test"):
                per_seed = [metrics_from_ranks(np.array(r["ranks"][split][mode])) for r in by_seed.values()]
                row[f"{split}_{mode}"] = {
                    k: {"mean": float(np.mean([m[k] for m in per_seed])), "se": _se([m[k] for m in per_seed])}
                    for k in ("hr@10", "ndcg@10")
                }
        row["seconds_per_epoch"] = float(np.mean([r["seconds_per_epoch"] for r in by_seed.values()]))
        row["epochs"] = [r["epochs"] for r in by_seed.values()]
        row["best_epoch"] = [r["best_epoch"] for r in by_seed.values()]
        row["stopped_early"] = [r["stopped_early"] for r in by_seed.values()]
        out["models"][name] = row
    rec = runs["recblr"]
    if rec:
        for split in ("valid", "test"):
            gap = (per_user_ndcg(rec, split, "stream") - per_user_ndcg(rec, split, "window")).mean(0)
            window = per_user_ndcg(rec, split, "window").mean()
            p = paired(gap)
            out[f"recblr_stream_minus_window_{split}"] = {**p, "relative": float(p["diff"] / window),
                                                         "passes_within_2se": bool(p["diff"] > -2 * p["se"])}  # fmt: skip
        for name in ("sasrec", "gru4rec"):
            seeds = sorted(set(runs[name]) & set(rec))  # paired on the seeds both models ran
            if not seeds:
                continue
            both = ({s: runs[name][s] for s in seeds}, {s: rec[s] for s in seeds})
            for mode in MODES[name]:
                for rmode in ("window", "stream"):
                    base = per_user_ndcg(both[0], "test", mode).mean(0)
                    ours = per_user_ndcg(both[1], "test", rmode).mean(0)
                    out["paired_vs_recblr"][f"{name}_{mode}_minus_recblr_{rmode}"] = {**paired(base - ours), "seeds": seeds}
    return out


def plot(runs: dict, costs: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"recblr": "tab:blue", "sasrec": "tab:orange", "gru4rec": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for name, by_seed in runs.items():
        for i, r in enumerate(by_seed.values()):
            ep = [h["epoch"] for h in r["history"]]
            nd = [h["valid_ndcg@10"] for h in r["history"]]
            ax.plot(ep, nd, color=colors[name], alpha=0.6, lw=1, label=f"{name} ({MODES[name][0]})" if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("ML-100K training curves (one line per seed)")
    ax.legend()
    labels = {"recblr_step": ("RecBLR cell step", "o-"), "gru4rec_step": ("GRU4Rec step", "s-"),
              "sasrec_reencode": ("SASRec re-encode (last 200)", "^-"),
              "sasrec_kv_cache": ("SASRec KV cache (200 pos.)", "v--"),
              "sasrec_1024_reencode": ("SASRec-1024 re-encode", "^:"),
              "sasrec_1024_kv_cache": ("SASRec-1024 KV cache", "v:")}  # fmt: skip
    for ax, batch in zip(axes[1:], ("1", "256"), strict=True):
        if costs is None or batch not in costs["by_batch"]:
            ax.set_visible(False)
            continue
        rows = costs["by_batch"][batch]
        for key, (label, style) in labels.items():
            pts = [(int(L), v) for L, v in rows[key].items() if v is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("history length (events)")
        ax.set_ylabel("ms per new event (CPU, PyTorch eager, 1 thread)")
        ax.set_title(f"cost of one new event, batch {batch}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(summary: dict, train_cost: dict | None, costs: dict | None) -> str:
    """The accuracy and cost tables as Markdown, for the docs and the README."""
    lines = ["| model | eval | seeds | test HR@10 | test NDCG@10 | NDCG@10 - RecBLR, same eval (paired) | s/epoch | epochs (best) per seed |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    pv = summary["paired_vs_recblr"]
    for name, row in summary["models"].items():
        for mode in MODES[name]:
            m = row[f"test_{mode}"]
            d = pv.get(f"{name}_{mode}_minus_recblr_{mode}") or pv.get(f"{name}_{mode}_minus_recblr_window")
            diff = "—" if name == "recblr" else f"{d['diff']:+.4f} ± {d['se']:.4f} ({d['z']:+.1f} SE)"
            lines.append(
                f"| {name} | {mode} | {len(row['seeds'])} | {m['hr@10']['mean']:.4f} ± {m['hr@10']['se']:.4f} "
                f"| {m['ndcg@10']['mean']:.4f} ± {m['ndcg@10']['se']:.4f} | {diff} | {row['seconds_per_epoch']:.1f} "
                f"| {', '.join(f'{e} ({b})' for e, b in zip(row['epochs'], row['best_epoch'], strict=True))} |"
            )
    if "recblr_stream_minus_window_test" in summary:
        p = summary["recblr_stream_minus_window_test"]
        lines += ["", f"RecBLR stream - window, test NDCG@10, paired over users: {p['diff']:+.4f} ± {p['se']:.4f} "
                      f"({100 * p['relative']:+.2f}%, {p['z']:+.1f} SE): "
                      f"{'within' if p['passes_within_2se'] else 'NOT within'} two standard errors."]  # fmt: skip
    if train_cost:
        lines += ["", "| model | s/epoch (2 epochs, fresh process) | peak training memory (MB) |", "|---|---|---|"]
        for name, row in train_cost.items():
            secs = ", ".join(f"{s:.1f}" for s in row["epoch_seconds"])
            lines.append(f"| {name} | {secs} | {row['peak_train_bytes'] / 2**20:.0f} |")
    if costs:
        rows = costs["by_batch"]
        lines += ["", "| ms per new event | batch | " + " | ".join(f"history {L}" for L in HISTORY) + " |",
                  "|---|---|" + "---|" * len(HISTORY)]  # fmt: skip
        for b, by_key in rows.items():
            for key, v in by_key.items():
                if isinstance(v, dict):
                    cells = " | ".join("—" if v[str(L)] is None else f"{v[str(L)]:.3f}" for L in HISTORY)
                    lines.append(f"| {key} | {b} | {cells} |")
            lines.append(f"| score_catalog | {b} | {by_key['score_catalog']:.3f} (any history) | | |")
    return "\n".join(lines)


def cmd_report(args) -> None:
    runs = load_runs()
    cost_path = RESULTS / "baselines_event_cost.json"
    train_path = RESULTS / "baselines_train_cost.json"
    costs = json.loads(cost_path.read_text()) if cost_path.exists() else None
    summary = summarize(runs)
    payload = {**provenance(), "data": "ml-100k", "max_len": MAX_LEN,
               "paired": "per-user test NDCG@10 averaged over the seeds both models ran; difference and its SE over users",
               **summary,
               "train_cost": json.loads(train_path.read_text())["models"] if train_path.exists() else None,
               "event_cost_ms_batch1": costs["by_batch"].get("1") if costs else None}  # fmt: skip
    print(write_result(args.name, payload))
    plot(runs, costs, RESULTS / f"{args.name}.png")
    print(markdown(summary, payload["train_cost"], costs))
    for name, row in summary["models"].items():
        for key in (k for k in row if k.startswith("test_")):
            m = row[key]
            print(f"{name:8s} {key:12s} seeds {len(row['seeds'])}  HR@10 {m['hr@10']['mean']:.4f} ± {m['hr@10']['se']:.4f}"
                  f"  NDCG@10 {m['ndcg@10']['mean']:.4f} ± {m['ndcg@10']['se']:.4f}  s/epoch {row['seconds_per_epoch']:.1f}")
    for key, p in summary["paired_vs_recblr"].items():
        print(f"{key:40s} {p['diff']:+.4f} ± {p['se']:.4f} ({p['z']:+.1f} SE)")
    if "recblr_stream_minus_window_test" in summary:
        p = summary["recblr_stream_minus_window_test"]
        print(f"recblr stream - window (test) {p['diff']:+.4f} ± {p['se']:.4f} ({100 * p['relative']:+.2f}%) "
              f"passes: {p['passes_within_2se']}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("runs")
    s.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    s.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    s.add_argument("--max-epochs", type=int, default=TrainConfig.epochs)
    s = sub.add_parser("run")
    s.add_argument("model", choices=MODELS)
    s.add_argument("seed", type=int)
    s.add_argument("--max-epochs", type=int, default=TrainConfig.epochs)
    s = sub.add_parser("epoch-cost")
    s.add_argument("model", choices=MODELS)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("train-cost")
    s.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--name", default="baselines_train_cost")
    s = sub.add_parser("event-cost")
    s.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement")
    s.add_argument("--name", default="baselines_event_cost")
    s = sub.add_parser("report")
    s.add_argument("--name", default="baselines")
    args = p.parse_args()
    if args.cmd == "run":
        print(run_one(args.model, args.seed, args.max_epochs))
    else:
        {"runs": cmd_runs, "epoch-cost": cmd_epoch_cost, "train-cost": cmd_train_cost,
         "event-cost": cmd_event_cost, "report": cmd_report}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    main()
