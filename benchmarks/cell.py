"""Per-step latency of the exported ONNX cell vs PyTorch, and the fp16/int8 variants.

    python benchmarks/cell.py [--checkpoint model.pt] [--threads 2] [--out benchmarks/results]

Latency (random weights at the paper's default sizes, D=64 L=2, catalog of --n-items):
for history lengths 10/100/1000 and batch 1/256, the time of one new event
  ort     - the ONNX cell on onnxruntime's CPU provider (ORT_ENABLE_ALL)
  eager   - the same cell (recblr.export.RecBLRCell) in eager PyTorch
  reencode- the PyTorch model re-encoding the whole history plus the new item
Variants: the ML-100K checkpoint given (or trained here for --epochs with recblr.train)
exported as fp32/fp16/int8; top-10 agreement with fp32 over every user's test history and
their step latency. Writes cell.json and cell_latency.png (matplotlib: benchmark-only dep).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from recblr.config import ModelConfig
from recblr.export import build_cell, export_cell
from recblr.export.verify import step_session
from recblr.model import RecBLR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import median_ms, provenance  # noqa: E402

HISTORY = (10, 100, 1000)
BATCHES = (1, 256)


def _timed(fn, min_reps: int, budget_s: float) -> float:
    return median_ms(fn, min_reps, budget_s, warmup=3, max_reps=2000)


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency(model: RecBLR, cell_path: Path, threads: int, top_k: int) -> list[dict]:
    cell = build_cell(model, top_k)
    sess = session(cell_path, threads)
    n = model.cfg.n_items
    rng = np.random.default_rng(0)
    rows = []
    for B in BATCHES:
        for L in HISTORY:
            hist = torch.from_numpy(rng.integers(1, n + 1, size=(B, L + 1)))
            with torch.inference_mode():
                _, state = model(hist[:, :L])
            item, excl = hist[:, L].contiguous(), torch.full((B, 1), -1, dtype=torch.long)
            feeds = {"item": item.numpy(), "state": state.numpy(), "exclude": excl.numpy()}

            def eager(item=item, state=state, excl=excl):
                with torch.inference_mode():
                    cell(item, state, excl)

            def reencode(hist=hist):
                with torch.inference_mode():
                    h = model.last_hidden(hist, torch.full((hist.shape[0],), hist.shape[1]))
                    torch.topk(model.item_scores(h), top_k, dim=1)

            heavy = B * L >= 100_000
            row = {
                "batch": B,
                "history": L,
                "ort_ms": _timed(lambda feeds=feeds: sess.run(None, feeds), 50, 1.5),
                "eager_ms": _timed(eager, 30, 1.5),
                "reencode_ms": _timed(reencode, 3 if heavy else 10, 3.0 if heavy else 1.5),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def variants(ckpt_path: Path, threads: int, out_dir: Path) -> dict:
    from recblr.checkpoint import load_checkpoint
    from recblr.data import dataset_from_spec

    ckpt = load_checkpoint(ckpt_path)
    data = dataset_from_spec(ckpt.data)
    if data is None:
        raise SystemExit(f"{ckpt_path}: its training data is not at hand; cannot measure agreement")
    hist, _ = data.split_histories("test")
    res: dict = {"checkpoint_metrics_test": ckpt.metrics.get("test"), "users": len(hist)}
    tops = {}
    for precision in ("fp32", "fp16", "int8"):
        path = export_cell(ckpt, out_dir / f"cell_{precision}.onnx", top_k=10, precision=precision)
        sess = session(path, threads)
        _, items, _ = step_session(sess, hist)
        tops[precision] = items
        s = ckpt.config.state_size
        lat = {}
        for B in BATCHES:
            feeds = {
                "item": np.arange(1, B + 1, dtype=np.int64) % ckpt.config.n_items + 1,
                "state": np.zeros((B, s), np.float32),
                "exclude": np.full((B, 1), -1, np.int64),
            }
            lat[f"batch{B}_ms"] = _timed(lambda feeds=feeds, sess=sess: sess.run(None, feeds), 50, 1.5)
        agree = float(
            np.mean([len(set(items[u]) & set(tops["fp32"][u])) / 10 for u in range(len(hist))])
        )
        res[precision] = {"top10_agreement_vs_fp32": agree, "file_bytes": path.stat().st_size, **lat}
        print(precision, json.dumps(res[precision]), flush=True)
    return res


def train_ml100k(folder: Path, epochs: int) -> Path:
    from recblr.config import TrainConfig
    from recblr.data import load_dataset
    from recblr.train import train

    data = load_dataset("ml-100k")
    out = folder / "ml100k.pt"
    train(data, ModelConfig(n_items=data.n_items), TrainConfig(epochs=epochs, device="cpu"), out=out)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BATCHES), figsize=(10, 4), sharey=False)
    for ax, B in zip(axes, BATCHES, strict=True):
        sub = [r for r in rows if r["batch"] == B]
        for key, label in [
            ("ort_ms", "ONNX cell (onnxruntime)"),
            ("eager_ms", "cell, eager PyTorch"),
            ("reencode_ms", "re-encode history (PyTorch)"),
        ]:
            ax.plot([r["history"] for r in sub], [r[key] for r in sub], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("history length (items)")
        ax.set_ylabel("ms per new event")
        ax.set_title(f"batch {B}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("RecBLR: latency of one recommendation step vs history length (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="ML-100K checkpoint (default: train one)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-items", type=int, default=3416, help="catalog size for the latency model")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = RecBLR(ModelConfig(n_items=args.n_items)).eval()
        cell_path = export_cell(model, tmp / "cell.onnx", top_k=args.top_k)
        rows = latency(model, cell_path, args.threads, args.top_k)
        ckpt = args.checkpoint or train_ml100k(tmp, args.epochs)
        var = variants(ckpt, args.threads, tmp)

    def row(B, L):
        return next(r for r in rows if r["batch"] == B and r["history"] == L)

    ratios = {}
    for B in BATCHES:
        ratios[f"batch{B}"] = {
            "ort_1000_over_10": row(B, 1000)["ort_ms"] / row(B, 10)["ort_ms"],
            **{f"eager_over_ort_L{L}": row(B, L)["eager_ms"] / row(B, L)["ort_ms"] for L in HISTORY},
            **{f"reencode_over_ort_L{L}": row(B, L)["reencode_ms"] / row(B, L)["ort_ms"] for L in HISTORY},
        }
    b1 = ratios["batch1"]
    targets = {
        "ort_flat_1000_vs_10_within_1.2x": all(
            ratios[f"batch{B}"]["ort_1000_over_10"] <= 1.2 for B in BATCHES
        ),
        "ort_2x_faster_than_eager_batch1": min(b1[f"eager_over_ort_L{L}"] for L in HISTORY) >= 2.0,
        "int8_top10_agreement_ge_0.95": var["int8"]["top10_agreement_vs_fp32"] >= 0.95,
        "fp16_top10_agreement_ge_0.95": var["fp16"]["top10_agreement_vs_fp32"] >= 0.95,
    }
    prov = provenance()
    commit, cpu = prov["git_commit"], prov["cpu"]
    import os

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": commit,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
        },
        "latency_model": ModelConfig(n_items=args.n_items).to_dict(),
        "top_k": args.top_k,
        "latency_ms_median": rows,
        "ratios": ratios,
        "variants_ml100k": var,
        "targets_met": targets,
    }
    (args.out / "cell.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "cell_latency.png")
    print(json.dumps({"ratios": ratios, "targets_met": targets}, indent=2))


if __name__ == "__main__":
    main()
