"""The engine on a retrieval cell: top-K from the HNSW index beside it, bound by weight hash."""

import shutil

import numpy as np
import pytest

from recblr.runtime.engine import Engine
from recblr.runtime.errors import CellError, UnknownItem

N_ITEMS = 60
IDS = ["<pad>"] + [f"i{i}" for i in range(1, N_ITEMS + 1)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(exact cell, retrieval cell) of one model, and a retrieval cell of another model."""
    import torch

    from recblr.config import ModelConfig
    from recblr.export.ann import export_retrieval
    from recblr.export.onnx_export import export_cell
    from recblr.model import RecBLR

    d = tmp_path_factory.mktemp("ann")
    out = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = RecBLR(ModelConfig(n_items=N_ITEMS, dim=16)).eval()
        out[f"ann{seed}"], _ = export_retrieval(model, IDS, d / f"ann{seed}" / "cell.onnx", top_k=10, opset=18)
        if seed == 1:
            out["exact"] = export_cell(model, d / "exact.onnx", top_k=10, item_ids=IDS)
    return out


def _events(seed=0, n=40):
    rng = np.random.default_rng(seed)
    return [f"u{u}" for u in rng.integers(0, 6, n)], [IDS[i] for i in rng.integers(1, N_ITEMS + 1, n)]


@pytest.mark.parametrize("exclude_seen", [0, 3])
def test_retrieval_engine_answers_like_the_exact_engine(pair, exclude_seen):
    users, items = _events()
    exact = Engine(pair["exact"], providers="cpu", exclude_seen=exclude_seen)
    ann = Engine(pair["ann1"], providers="cpu", exclude_seen=exclude_seen)
    assert ann.state_key == exact.state_key  # same weights: the same user states
    for a, b in zip(exact.step(users, items), ann.step(users, items), strict=True):
        assert b.items == a.items  # 60 items, default beam 64: the search is exhaustive
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
    if exclude_seen:
        last = {}
        for u, it in zip(users, items, strict=True):
            last.setdefault(u, []).append(it)
        for u, seen in last.items():
            assert not set(seen[-exclude_seen:]) & set(ann.recommend(u).items)


def test_unknown_item_policy_holds(pair):
    ann = Engine(pair["ann1"], providers="cpu", unknown_items="skip")
    ann.step(["u"], ["i3"])
    (r,) = ann.apply([type("E", (), {"user": "u", "item": "nope", "seq": None})()])
    assert not r.applied and r.reason == "unknown_item" and len(r.items) == 10
    with pytest.raises(UnknownItem):
        Engine(pair["ann1"], providers="cpu").step(["u"], ["nope"])


def test_index_of_other_weights_or_missing_is_refused(pair, tmp_path):
    cell = tmp_path / "cell.onnx"
    shutil.copy(pair["ann1"], cell)
    with pytest.raises(CellError, match="index description is missing"):
        Engine(cell, providers="cpu")
    other = pair["ann2"]
    for suffix in (".hnsw", ".hnsw.json"):
        shutil.copy(other.with_name(other.name + suffix), cell.with_name(cell.name + suffix))
    with pytest.raises(CellError, match="other weights") as err:
        Engine(cell, providers="cpu")
    assert "\n" not in str(err.value)
