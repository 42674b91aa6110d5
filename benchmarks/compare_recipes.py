"""Two training recipes, a few seeds each, compared user by user: is a difference more than noise?

    python benchmarks/compare_recipes.py --a CKPT [CKPT ...] --b CKPT [CKPT ...] [--name NAME]

Every checkpoint ranks every user's validation and test target in both modes. A recipe's
per-user NDCG@10 is the mean over its seeds (its checkpoints), so what is left is the noise of
which users and targets the split holds. Reported per split and mode: each recipe's mean, the
difference b - a with its standard error over users (paired: the same users and targets), each
seed's mean, the same by history length, and each recipe's stream - window gap with its
standard error over users.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import load_for, provenance, write_result  # noqa: E402

from recblr.data import load_dataset  # noqa: E402
from recblr.evaluate import history_ranks, ndcg_per_user  # noqa: E402

LENGTHS = {"<=50": (0, 50), "51-200": (51, 200), ">200": (201, None)}


def paired(diff: np.ndarray) -> dict:
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return {"diff": float(diff.mean()), "se": se, "z": float(diff.mean() / se) if se > 0 else 0.0}


def per_user(models, data, split: str, max_len: int) -> dict:
    """{mode: (seeds, users) NDCG@10} for one recipe."""
    hist, tgt = data.split_histories(split)
    out = {}
    for mode in ("window", "stream"):
        out[mode] = np.stack(
            [ndcg_per_user(history_ranks(m, hist, tgt, mode, max_len), 10) for m in models]
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--a", nargs="+", required=True, help="checkpoints of recipe a (the baseline)")
    p.add_argument("--b", nargs="+", required=True, help="checkpoints of recipe b")
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--name", default="compare_recipes")
    args = p.parse_args()
    data = load_dataset(args.data)
    recipes = {
        key: [load_for(path, data, args.data).model for path in paths]
        for key, paths in (("a", args.a), ("b", args.b))
    }
    report = {}
    for split in ("valid", "test"):
        lengths = np.array([len(h) for h in data.split_histories(split)[0]])
        nd = {k: per_user(ms, data, split, args.max_len) for k, ms in recipes.items()}
        for mode in ("window", "stream"):
            a, b = nd["a"][mode].mean(0), nd["b"][mode].mean(0)
            by_len = {}
            for name, (lo, hi) in LENGTHS.items():
                mask = (lengths >= lo) & (lengths <= (np.inf if hi is None else hi))
                by_len[name] = {"users": int(mask.sum()), "a": float(a[mask].mean()),
                                "b": float(b[mask].mean()), **paired(b[mask] - a[mask])}  # fmt: skip
            report[f"{split}_{mode}"] = {
                "a": float(a.mean()), "b": float(b.mean()), "b_minus_a": paired(b - a),
                "a_per_seed": nd["a"][mode].mean(1).round(5).tolist(),
                "b_per_seed": nd["b"][mode].mean(1).round(5).tolist(),
                "by_history_length": by_len,
            }  # fmt: skip
        for key in ("a", "b"):
            gap = nd[key]["stream"].mean(0) - nd[key]["window"].mean(0)
            report[f"{split}_stream_minus_window_{key}"] = {
                **paired(gap),
                "relative": float(gap.mean() / nd[key]["window"].mean()),
            }
    for key, row in report.items():
        if "b_minus_a" in row:
            d = row["b_minus_a"]
            print(
                f"{key:14s} a {row['a']:.4f}  b {row['b']:.4f}  b-a {d['diff']:+.4f} ± {d['se']:.4f} ({d['z']:+.1f} SE)"
            )
        else:
            print(f"{key:30s} {row['diff']:+.4f} ± {row['se']:.4f} ({100 * row['relative']:+.2f}%)")
    payload = {**provenance(), "data": args.data, "checkpoints": {"a": args.a, "b": args.b},
               "metric": "NDCG@10 per user, averaged over each recipe's seeds", "results": report}  # fmt: skip
    print(write_result(args.name, payload))


if __name__ == "__main__":
    main()
