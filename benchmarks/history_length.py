"""How much history helps: NDCG@10 of users with long histories, by how many items the model sees.

    python benchmarks/history_length.py CKPT [CKPT ...] [--data ml-100k] [--name history_length]

`window` evaluation feeds the last 200 items from the zero state; `stream` feeds the whole
history, as serving does. They differ only for users with more than 200 items, so this script
takes those users and scores them from the last W items for several W, the whole history last.
It also reports the learned decay floors exp(-softplus(Lambda)): a_t never falls below them
(r_t only raises it), so a channel whose floor is 0.998 keeps half of what it held 350 steps
ago, whatever the items say.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import load_for, provenance, write_result  # noqa: E402

from recblr.data import load_dataset  # noqa: E402
from recblr.evaluate import history_ranks, metrics_from_ranks  # noqa: E402

WINDOWS = (25, 50, 100, 200, 300, 400)


def decay_floors(model) -> dict:
    """Quantiles of the per-channel floor of a_t, and the half-life (steps) it allows."""
    out = {}
    for name, p in model.lambda_parameters().items():
        a = torch.exp(-F.softplus(p.detach().float())).numpy()
        q = np.quantile(a, [0.0, 0.1, 0.5, 0.9, 1.0])
        out[name] = {
            "a_floor_quantiles_0_10_50_90_100": [round(float(x), 5) for x in q],
            "half_life_steps_at_90th_percentile": round(float(np.log(0.5) / np.log(q[3])), 1),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--min-len", type=int, default=200, help="users with more items than this")
    p.add_argument("--name", default="history_length")
    args = p.parse_args()
    data = load_dataset(args.data)
    rows = []
    for path in args.checkpoints:
        ck = load_for(path, data, args.data)
        model = ck.model
        row = {"checkpoint": str(path), "train_config": ck.train_config, "decay_floors": decay_floors(model)}
        for split in ("valid", "test"):
            hist, tgt = data.split_histories(split)
            keep = np.array([len(h) > args.min_len for h in hist])
            long_h = [h for h, k in zip(hist, keep, strict=True) if k]
            by_w = {}
            for w in (*WINDOWS, None):  # None: the whole history, as stream mode feeds it
                mode = "stream" if w is None else "window"
                r = history_ranks(model, long_h, tgt[keep], mode, w or 0)
                ndcg = metrics_from_ranks(r, (10,))["ndcg@10"]
                by_w["all" if w is None else str(w)] = round(ndcg, 5)
            row[split] = {"users": int(keep.sum()), "ndcg10_by_last_items": by_w}
        rows.append(row)
        print(path, {s: row[s]["ndcg10_by_last_items"] for s in ("valid", "test")})
    print(write_result(args.name, {**provenance(), "dataset": args.data, "min_len": args.min_len,
                                   "runs": rows}))


if __name__ == "__main__":
    main()
