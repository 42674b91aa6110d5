"""The ONNX cell stepped item by item == the PyTorch model on the whole history."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from recblr.export.verify import (
    compare_topk,
    cpu_session,
    reference_scores,
    step_session,
)
from recblr.runtime import contract as C

LENGTHS = (1, 5, 200, 1000)


def histories_for(n_items: int, seed: int, lengths=LENGTHS) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, n_items + 1, size=L).astype(np.int64) for L in lengths]


def sessions(path):
    """Default session options (as a plain user would open it) and ORT_ENABLE_ALL."""
    default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"default": default, "enable_all": cpu_session(path, optimize=True)}


def assert_parity(model, session, histories, exclude=None):
    _, items, scores = step_session(session, histories, exclude)
    ref = reference_scores(model, histories, exclude)
    rep = compare_topk(items, scores, ref)
    assert rep.ok, rep.problems
    assert rep.max_score_diff <= 1e-4
    # Items must be identical except where the model's scores tie within 1e-5.
    ref_items = torch.topk(torch.from_numpy(ref), items.shape[1], dim=1).indices.numpy()
    assert (items == ref_items).mean() == 1.0 or rep.swapped > 0
    assert (items != 0).all()
    return items, scores, ref


@pytest.mark.parametrize("which", ["random_cell", "wild_cell", "trained_cell"])
@pytest.mark.parametrize("opts", ["default", "enable_all"])
def test_stepping_matches_full_sequence(which, opts, request):
    model, path = request.getfixturevalue(which)
    n_items = model.cfg.n_items
    session = sessions(path)[opts]
    # Lengths 1, 5, 200 and 1000 stepped in one loop (the batch shrinks as users finish).
    hist = histories_for(n_items, seed=3) + histories_for(n_items, seed=4, lengths=(1000, 37))
    assert_parity(model, session, hist)


def test_trained_weights_are_not_initial(trained):
    """The trained fixture really moved the weights (parity on it is not a random-init test)."""
    from recblr.model import RecBLR

    fresh = RecBLR(trained.config)
    moved = [
        (trained.model.state_dict()[k] - v).abs().max().item()
        for k, v in fresh.state_dict().items()
        if k.endswith("in_proj.weight")
    ]
    assert min(moved) > 1e-3
    assert trained.metrics.get("epochs", 0) >= 1


def test_state_layout_matches_model(trained_cell):
    """next_state follows the contract layout: equal to RecBLR.forward's packed state."""
    model, path = trained_cell
    session = cpu_session(path)
    hist = histories_for(model.cfg.n_items, seed=5, lengths=(1, 4, 9))
    state, _, _ = step_session(session, hist)
    items = torch.zeros(3, 9, dtype=torch.long)
    for i, h in enumerate(hist):
        items[i, : len(h)] = torch.from_numpy(h)
    with torch.no_grad():
        _, ref_state = model(items, lengths=torch.tensor([1, 4, 9]))
    np.testing.assert_allclose(state, ref_state.numpy(), atol=1e-5)


def test_continuing_from_model_state(trained_cell):
    """A state produced by the PyTorch model continues correctly in the cell."""
    model, path = trained_cell
    session = cpu_session(path)
    hist = histories_for(model.cfg.n_items, seed=6, lengths=(30,))[0]
    with torch.no_grad():
        _, s = model(torch.from_numpy(hist[:20]).unsqueeze(0))
    _, items, scores = step_session(session, [hist[20:]], state=s.numpy())
    ref = reference_scores(model, [hist])
    assert compare_topk(items, scores, ref).ok


@pytest.mark.parametrize("which", ["wild_cell", "trained_cell"])
def test_exclude_removes_items(which, request):
    model, path = request.getfixturevalue(which)
    session = cpu_session(path)
    hist = histories_for(model.cfg.n_items, seed=8, lengths=(5, 50, 200))
    _, plain, _ = step_session(session, hist)
    # Exclude each user's own top-3 plus a -1 pad, a duplicate and the user's history.
    exclude = [
        [int(plain[0, 0]), int(plain[0, 1]), int(plain[0, 2]), -1, int(plain[0, 0])],
        [int(plain[1, 0]), int(plain[1, 1]), int(plain[1, 2])] + hist[1][:10].tolist(),
        [-1],
    ]
    items, _, _ = assert_parity(model, session, hist, exclude)
    for u, ex in enumerate(exclude):
        assert not set(items[u].tolist()) & {e for e in ex if e > 0}
    # The user with only -1 is unaffected.
    np.testing.assert_array_equal(items[2], plain[2])
    # The others moved up: their 4th item is now first.
    assert items[0, 0] == plain[0, 3]


def test_exclude_width_and_batch_are_dynamic(random_cell):
    model, path = random_cell
    session = cpu_session(path)
    S = model.cfg.state_size
    for B, X in [(1, 1), (7, 1), (3, 9)]:
        out = session.run(
            None,
            {
                C.INPUT_ITEM: np.arange(1, B + 1, dtype=np.int64),
                C.INPUT_STATE: np.zeros((B, S), np.float32),
                C.INPUT_EXCLUDE: np.full((B, X), -1, np.int64),
            },
        )
        assert out[0].shape == (B, S) and out[1].shape == (B, 10) and out[2].shape == (B, 10)
        assert out[1].dtype == np.int64 and out[2].dtype == np.float32


def test_batch_equals_each_user_alone(trained_cell):
    model, path = trained_cell
    session = cpu_session(path)
    hist = histories_for(model.cfg.n_items, seed=9, lengths=(3, 17, 1, 60, 17))
    exclude = [[1, 2], [-1], [5], [], [3, -1, 4]]
    state, items, scores = step_session(session, hist, exclude)
    for u in range(len(hist)):
        s1, i1, sc1 = step_session(session, [hist[u]], [exclude[u]])
        np.testing.assert_array_equal(items[u], i1[0])
        np.testing.assert_allclose(scores[u], sc1[0], atol=1e-6)
        np.testing.assert_allclose(state[u], s1[0], atol=1e-6)


def test_compare_topk_catches_mistakes():
    """The checker itself: a wrong item or score fails, a swap of tied items does not."""
    ref = np.array([[-np.inf, 0.5, 0.9, 0.1, 0.9 - 1e-6, 0.3]])
    good = compare_topk(np.array([[2, 4, 1]]), np.array([[0.9, 0.9 - 1e-6, 0.5]], np.float32), ref)
    assert good.ok
    tied = compare_topk(np.array([[4, 2, 1]]), np.array([[0.9, 0.9 - 1e-6, 0.5]], np.float32), ref)
    assert tied.ok and tied.swapped == 2
    wrong_item = compare_topk(np.array([[2, 4, 5]]), np.array([[0.9, 0.9, 0.5]], np.float32), ref)
    assert not wrong_item.ok
    wrong_score = compare_topk(np.array([[2, 4, 1]]), np.array([[0.9, 0.9, 0.51]], np.float32), ref)
    assert not wrong_score.ok
    padding = compare_topk(np.array([[2, 4, 0]]), np.array([[0.9, 0.9, 0.5]], np.float32), ref)
    assert not padding.ok
