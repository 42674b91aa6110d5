"""#14: `recblr train --init-from`: the id mapping is extended, old weights and rows are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import synthetic_rows, write_inter

from recblr.checkpoint import load_checkpoint
from recblr.data import load_dataset
from recblr.warm_start import extend_vocabulary, warm_config, warm_model

TINY = ["--epochs", "1", "--max-len", "8", "--batch-size", "64", "--dim", "8"]


def recblr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recblr", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def weeks(tmp_path_factory) -> tuple[Path, Path, Path]:
    """week1 (items i0..i29), week2 (i0..i39: ten new items), and a model trained on week1."""
    d = tmp_path_factory.mktemp("weeks")
    w1 = write_inter(d / "w1.inter", synthetic_rows(n_items=30, seed=0))
    w2 = write_inter(d / "w2.inter", synthetic_rows(n_items=40, seed=1))
    m1 = d / "m1.pt"
    r = recblr("train", "--data", str(w1), "--out", str(m1), *TINY)
    assert r.returncode == 0, r.stderr
    return w1, w2, m1


def test_mapping_is_extended_never_renumbered(weeks):
    _, w2, m1 = weeks
    old = load_checkpoint(m1).item_ids
    raw = load_dataset(str(w2))
    ext = extend_vocabulary(raw, old)
    assert ext.item_ids[: len(old)] == old  # every old item keeps its internal id
    new = [x for x in raw.item_ids[1:] if x not in set(old)]
    assert new and ext.item_ids[len(old) :] == new  # appended in the data's first-appearance order
    for a, b in zip(raw.sequences, ext.sequences, strict=True):  # the same items, renamed
        assert [raw.item_ids[i] for i in a] == [ext.item_ids[i] for i in b]


def test_old_rows_and_weights_are_kept_new_rows_fresh(weeks):
    _, w2, m1 = weeks
    ckpt = load_checkpoint(m1)
    data = extend_vocabulary(load_dataset(str(w2)), ckpt.item_ids)
    model = warm_model(ckpt, warm_config(ckpt, data), seed=0)
    old_sd, new_sd = ckpt.model.state_dict(), model.state_dict()
    n_old = len(ckpt.item_ids)
    emb = new_sd["item_emb.weight"]
    assert emb.shape[0] == data.n_items + 1 > n_old
    torch.testing.assert_close(emb[:n_old], old_sd["item_emb.weight"], rtol=0, atol=0)
    assert emb[n_old:].abs().sum() > 0  # fresh, not zero rows
    for name, t in old_sd.items():
        if name != "item_emb.weight":
            torch.testing.assert_close(new_sd[name], t, rtol=0, atol=0)


def test_cli_warm_start_and_mismatch_refused(weeks, tmp_path):
    _, w2, m1 = weeks
    old = load_checkpoint(m1)
    m2 = tmp_path / "m2.pt"
    args = ["--epochs", "1", "--max-len", "8", "--batch-size", "64"]  # --dim from the checkpoint
    r = recblr("train", "--data", str(w2), "--init-from", str(m1), "--out", str(m2), *args)
    assert r.returncode == 0, r.stderr
    new = load_checkpoint(m2)
    assert new.item_ids[: len(old.item_ids)] == old.item_ids
    assert new.config.dim == old.config.dim == 8 and new.config.n_items > old.config.n_items
    assert np.isfinite(new.metrics["valid"]["stream"]["ndcg@10"])

    r = recblr("train", "--data", str(w2), "--init-from", str(m1), "--out", str(m2), *args, "--dim", "16")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "--init-from" in line and "--dim 8" in line and "--dim 16" in line
