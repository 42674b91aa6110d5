"""The pyarrow/CSR data path gives exactly the old path's vocabulary, users and sequences."""

from pathlib import Path

import data_oracle as old
import numpy as np
import pytest

from recblr.data import load_dataset


def assert_same(new, ref) -> None:
    assert new.item_ids == ref.item_ids
    assert new.user_ids == ref.user_ids
    assert new.n_users == len(ref.sequences)
    for a, b in zip(new.sequences, ref.sequences, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for split in ("valid", "test"):
        (ha, ta), (hb, tb) = new.split_histories(split), ref.split_histories(split)
        assert np.array_equal(ta, tb) and all(np.array_equal(x, y) for x, y in zip(ha, hb, strict=True))


def messy_rows(seed: int, n: int = 1500) -> list[tuple[str, str, str]]:
    """Power-law items, many equal timestamps, duplicate rows, ids that only differ as
    strings ('7' vs '007'), padded ids, and users/items the k-core removes."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 90, 70
    users = [f"u{k}" if k % 3 else f"{k:03d}" for k in range(n_users)] + ["7", " 7 "]
    items = [f"i{k}" if k % 4 else str(k) for k in range(n_items)] + ["0", "00"]
    pu = 1.0 / np.arange(1, len(users) + 1) ** 0.8
    pi = 1.0 / np.arange(1, len(items) + 1) ** 1.1
    u = rng.choice(len(users), n, p=pu / pu.sum())
    i = rng.choice(len(items), n, p=pi / pi.sum())
    t = rng.integers(0, 40, n)  # few distinct times: many ties
    rows = [(users[a], items[b], str(c) if c % 5 else f"{c}.0") for a, b, c in zip(u, i, t, strict=True)]
    dup = rng.choice(n, n // 10)
    for k in sorted(dup, reverse=True):
        rows.insert(int(k), rows[int(k)])
    return rows


def write(path: Path, rows, fmt: str) -> Path:
    if fmt == "inter":
        lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [f"{u}\t{i}\t1\t{t}" for u, i, t in rows]
    elif fmt == "csv":
        lines = ["rating,user_id,timestamp,item_id"] + [f"3,{u},{t},{i}" for u, i, t in rows]
    elif fmt == "tsv":
        lines = ["user\titem\tts"] + [f"{u}\t{i}\t{t}" for u, i, t in rows]
    elif fmt == "ml-1m":
        lines = [f"{u.strip()}::{i}::4::{t}" for u, i, t in rows]
    else:
        lines = [f"{u.strip()}\t{i}\t4\t{t}" for u, i, t in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fmt, name", [("inter", "x.inter"), ("csv", "x.csv"), ("tsv", "x.tsv"),
                                       ("ml-1m", "ratings.dat"), ("ml-100k", "u.data")])
@pytest.mark.parametrize("seed, k", [(0, 5), (1, 3), (2, 8)])
def test_same_as_old_path_on_messy_files(tmp_path: Path, fmt, name, seed, k):
    path = write(tmp_path / name, messy_rows(seed), fmt)
    ref = old.build_sequences(old.load_interactions(path), k)
    assert len(ref.sequences) > 5 and ref.n_items > 5  # the filter keeps something...
    assert len(ref.user_ids) < 92 and ref.n_items < 72  # ...and removes something
    assert_same(load_dataset(str(path), min_count=k), ref)


def test_same_as_old_path_on_ml100k(ml100k: Path):
    assert_same(load_dataset(str(ml100k)), old.load_dataset(str(ml100k)))
