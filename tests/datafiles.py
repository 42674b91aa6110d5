"""Small interaction files for tests (importable: pytest adds tests/ to sys.path)."""

from __future__ import annotations

import random
from pathlib import Path


def write_inter(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t1\t{t}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def synthetic_rows(n_users: int = 40, n_items: int = 30, length: tuple[int, int] = (6, 25), seed: int = 0):
    """Users walking a ring of items with noise: learnable, so training must beat chance."""
    rng = random.Random(seed)
    rows = []
    for u in range(n_users):
        pos = rng.randrange(n_items)
        for t in range(rng.randint(*length)):
            step = 1 if rng.random() < 0.8 else rng.randrange(n_items)
            pos = (pos + step) % n_items
            rows.append((f"u{u}", f"i{pos}", 1000.0 * u + t))
    return rows
