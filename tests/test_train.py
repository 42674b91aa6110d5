from pathlib import Path

import numpy as np
import pytest
import torch

from recblr.checkpoint import load_checkpoint
from recblr.config import ModelConfig, TrainConfig
from recblr.data import load_dataset
from recblr.errors import RecblrError
from recblr.model import RecBLR
from recblr.train import (
    carried_states,
    epoch_batches,
    length_batches,
    prefix_examples,
    sequence_windows,
    train,
)


def test_windows_cover_every_pair_once():
    seqs = [np.arange(1, 12), np.arange(1, 4), np.arange(1, 6)]
    windows = sequence_windows(seqs, max_len=4)
    assert windows == [(0, 0, 4), (0, 4, 4), (0, 8, 2), (1, 0, 2), (2, 0, 4)]
    assert sum(n for *_, n in windows) == sum(len(s) - 1 for s in seqs) == len(prefix_examples(seqs))


def test_random_window_offsets_move_the_cuts_and_still_cover_every_pair_once():
    seqs = [np.arange(1, 40), np.arange(1, 4), np.arange(1, 6), np.arange(1, 10)]
    rng = np.random.default_rng(0)
    firsts = set()
    for _ in range(20):
        windows = sequence_windows(seqs, max_len=4, rng=rng)
        covered = [(u, s + i) for u, s, n in windows for i in range(n)]
        pairs = [(u, p) for u, s in enumerate(seqs) for p in range(len(s) - 1)]
        assert sorted(covered) == pairs
        assert all(1 <= n <= 4 for *_, n in windows)
        assert [w for w in windows if w[0] in (1, 2)] == [(1, 0, 2), (2, 0, 4)]  # one window: no cut
        firsts.add(next(n for u, s, n in windows if u == 0))
    assert len(firsts) > 1  # the first cut of a long sequence moves between epochs


def test_length_batches_respect_budget_and_cover_all():
    lengths = np.random.default_rng(0).integers(1, 50, size=300)
    batches = length_batches(lengths, budget=128, rng=np.random.default_rng(1))
    flat = np.sort(np.concatenate(batches))
    assert np.array_equal(flat, np.arange(300))
    assert all(lengths[b].sum() <= 128 or len(b) == 1 for b in batches)


def test_carried_state_equals_streaming_the_prefix():
    torch.manual_seed(0)
    model = RecBLR(ModelConfig(n_items=20, dim=8)).train()  # carried state is computed in eval mode
    seqs = [np.array([3, 4, 5, 6, 7, 8, 9]), np.array([1, 2, 3])]
    state = carried_states(model, [seqs[0][:4], seqs[1][:0]], torch.device("cpu"))
    assert model.training  # and the mode it found is restored
    model.eval()
    _, expect = model(torch.tensor([[3, 4, 5, 6]]))
    assert torch.allclose(state[0], expect[0], atol=1e-6)
    assert torch.all(state[1] == 0)


def test_training_learns_and_saves_best_checkpoint(small_inter: Path, tmp_path: Path):
    data = load_dataset(str(small_inter))
    out = tmp_path / "model.pt"
    cfg = TrainConfig(max_len=8, batch_size=64, epochs=6, patience=10, seed=1)
    result = train(data, ModelConfig(n_items=data.n_items, dim=16, dropout=0.1), cfg, out)
    m = result.metrics
    assert m["complete"] and m["epochs"] == 6 and 1 <= m["best_epoch"] <= 6
    assert set(m["test"]) == {"window", "stream"}
    # a ring walk is learnable: far better than the ~10/30 chance of HR@10
    assert m["test"]["stream"]["hr@10"] > 0.6
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    ckpt = load_checkpoint(out)
    assert ckpt.item_ids == data.item_ids and ckpt.user_ids == data.user_ids
    assert ckpt.metrics["best_epoch"] == m["best_epoch"]
    for k, v in result.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v)


def test_prefix_mode_bpr_and_random_offsets_run(small_inter: Path):
    data = load_dataset(str(small_inter))
    for cfg in (TrainConfig(max_len=8, batch_size=128, epochs=1, example_mode="prefix"),
                TrainConfig(max_len=8, batch_size=128, epochs=1, loss="bpr"),
                TrainConfig(max_len=8, batch_size=128, epochs=1, window_offsets="random")):
        result = train(data, ModelConfig(n_items=data.n_items, dim=8), cfg)
        assert np.isfinite(result.metrics["history"][0]["loss"])


@pytest.mark.parametrize("mode", ["sequence", "prefix"])
def test_batches_hold_every_pair_once(mode: str):
    seqs = [np.arange(1, 12), np.arange(20, 23), np.arange(30, 35)]
    cfg = TrainConfig(max_len=4, batch_size=6, example_mode=mode)
    batches = epoch_batches(seqs, cfg, np.random.default_rng(0))
    pairs = []
    for b in batches:
        assert b.items.shape == b.targets.shape and len(b.context) == len(b.lengths)
        for row, ctx in enumerate(b.context):
            seen = np.concatenate([ctx, b.items[row, : b.lengths[row]]])
            assert np.all(b.items[row, b.lengths[row]:] == 0)
            for t in np.flatnonzero(b.targets[row]):
                prefix = seen[: len(ctx) + t + 1]
                if mode == "prefix":  # the last max_len items, from the empty state
                    assert len(ctx) == 0 and t == b.lengths[row] - 1
                pairs.append((tuple(prefix[-cfg.max_len:]), int(b.targets[row, t])))
    expect = [(tuple(s[max(0, e - 4) : e]), int(s[e])) for s in seqs for e in range(1, len(s))]
    assert sorted(pairs) == sorted(expect) and sum(b.n_pairs for b in batches) == len(expect)


@pytest.mark.parametrize("field, value", [("window_offsets", "shifted"), ("loss", "mse"), ("epochs", 0),
                                          ("lambda_lr_scale", 0.0), ("example_mode", "x"), ("lr", -1.0)])
def test_train_config_names_the_bad_setting(field: str, value):
    with pytest.raises(RecblrError, match=f"^{field} "):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("dim", 0), ("n_layers", 0), ("conv_width", 0), ("dropout", 1.0)])
def test_model_config_names_the_bad_setting(field: str, value):
    with pytest.raises(RecblrError, match=f"^{field} "):
        ModelConfig(**{"n_items": 5, field: value})


def test_lambda_learns_at_its_own_rate(small_inter: Path):
    from recblr.train import param_groups

    data = load_dataset(str(small_inter))
    model_cfg = ModelConfig(n_items=data.n_items, dim=8, n_layers=2)
    cfg = TrainConfig(max_len=8, batch_size=64, epochs=1, lr=1e-3, lambda_lr_scale=100.0)
    groups = param_groups(RecBLR(model_cfg), cfg)
    assert [len(g["params"]) for g in groups][1] == 2 and groups[1]["lr"] == pytest.approx(0.1)
    # Adam's steps are about lr in size, so Lambda moves ~100x further at scale 100
    torch.manual_seed(cfg.seed)
    before = RecBLR(model_cfg).state_dict()

    def lam_moved(scale: float) -> float:
        trained = train(data, model_cfg, TrainConfig(**{**cfg.to_dict(), "lambda_lr_scale": scale}))
        after = trained.model.state_dict()
        return max((after[k] - before[k]).abs().max().item() for k in trained.model.lambda_parameters())

    assert lam_moved(100.0) > 10 * lam_moved(1.0)


def test_no_finite_validation_is_a_clear_error(small_inter: Path, monkeypatch):
    import pytest

    import recblr.train
    from recblr.errors import RecblrError

    # a diverged model validates as NaN every epoch: nothing to save, and it must say so
    monkeypatch.setattr(recblr.train, "evaluate", lambda *a, **k: {"stream": {"ndcg@10": float("nan")}})
    data = load_dataset(str(small_inter))
    cfg = TrainConfig(max_len=8, batch_size=64, epochs=2)
    with pytest.raises(RecblrError, match="no epoch gave a finite validation NDCG@10"):
        train(data, ModelConfig(n_items=data.n_items, dim=8), cfg)


def _one_step(model: RecBLR, cfg: TrainConfig, batch, seed: int = 0):
    """One `train_epoch` step of `batch` with the trainer's optimiser; returns the table's gradient."""
    from recblr.losses import NegativeSampler, make_loss
    from recblr.train import make_optimizer, train_epoch

    opt = make_optimizer(model, cfg)
    sampler = NegativeSampler.build("uniform", model.cfg.n_items)
    loss_fn = make_loss(cfg.loss, model.item_emb, torch.Generator().manual_seed(seed), cfg.negatives, sampler)
    grads = []
    real_step = opt.step

    def step():  # the gradient the optimiser is about to apply
        grads.append(model.item_emb.weight.grad)
        real_step()

    opt.step = step
    torch.manual_seed(seed)
    tally = train_epoch(model, opt, [batch], loss_fn, torch.device("cpu"))
    return grads[0], tally


def _batch(n_items: int, rows: int = 6, length: int = 7, seed: int = 0):
    from recblr.train import Batch

    x = np.random.default_rng(seed).integers(1, n_items + 1, (rows, length + 1))
    return Batch(x[:, :-1].copy(), np.full(rows, length), x[:, 1:].copy(), [np.zeros(0, dtype=np.int64)] * rows)


@pytest.mark.parametrize("loss", ["sampled", "bpr"])
def test_sparse_embeddings_give_the_dense_gradient_and_first_step(loss: str):
    """Sparse lookups change how the table's gradient is stored, not its values. The first step
    moves an untouched row by 0 in both (Adam's zero gradient gives a zero step) and a touched
    entry by lr g / (|g| + eps'): Adam's eps' is eps, SparseAdam's eps / sqrt(1 - beta2) (it adds
    eps before the bias correction). The rest of the network is updated by the same Adam."""
    cfg = ModelConfig(n_items=50, dim=8, dropout=0.0)
    batch = _batch(50)
    torch.manual_seed(1)
    dense_model = RecBLR(cfg)
    sparse_model = RecBLR(cfg)
    sparse_model.load_state_dict(dense_model.state_dict())
    w0 = dense_model.item_emb.weight.detach().clone()
    g_dense, t_dense = _one_step(dense_model, TrainConfig(loss=loss, negatives=16), batch)
    g_sparse, t_sparse = _one_step(sparse_model, TrainConfig(loss=loss, negatives=16, sparse_embeddings=True), batch)
    assert not g_dense.is_sparse and g_sparse.is_sparse
    assert torch.allclose(g_sparse.to_dense(), g_dense, atol=1e-7)
    assert t_sparse.loss_sum == pytest.approx(t_dense.loss_sum, rel=1e-6)
    touched = g_dense.abs().sum(1) > 0
    assert 0 < int(touched.sum()) < cfg.n_items + 1  # some rows untouched: the case SparseAdam differs on later
    lr, eps, beta2 = 1e-3, 1e-8, 0.999
    for model, eps_used in ((dense_model, eps), (sparse_model, eps / (1 - beta2) ** 0.5)):
        moved = model.item_emb.weight.detach() - w0
        assert torch.allclose(moved, -lr * g_dense / (g_dense.abs() + eps_used), rtol=1e-4, atol=1e-9)
        assert not moved[~touched].any()
    for k, v in dense_model.state_dict().items():
        if k != "item_emb.weight":
            assert torch.allclose(sparse_model.state_dict()[k], v, atol=1e-7), k


def test_sparse_embeddings_gradient_does_not_grow_with_the_catalog():
    """The table's gradient holds one row per lookup, whatever the catalog size: a step's memory
    beyond the table (and SparseAdam's two moments) is flat in the catalog."""
    sizes = {}
    for n in (100, 100_000):
        torch.manual_seed(0)
        g, _ = _one_step(RecBLR(ModelConfig(n_items=n, dim=8)), TrainConfig(loss="sampled", negatives=32,
                                                                          sparse_embeddings=True), _batch(n))
        assert g.is_sparse and g.shape == (n + 1, 8)
        sizes[n] = g._values().numel()
    assert max(sizes.values()) <= (6 * 7 * 2 + 32) * 8  # at most inputs + targets + negatives, 8 floats each


def test_sparse_embeddings_training_learns(small_inter: Path):
    data = load_dataset(str(small_inter))
    cfg = TrainConfig(max_len=8, batch_size=64, epochs=4, loss="sampled", negatives=16, sparse_embeddings=True, seed=1)
    result = train(data, ModelConfig(n_items=data.n_items, dim=16, dropout=0.1), cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.metrics["test"]["stream"]["hr@10"] > 0.3  # chance is ~10/30
    assert not result.model.item_emb.sparse  # handed back dense, for export and evaluation


def test_sparse_embeddings_refused_with_ce_and_under_ddp(small_inter: Path, monkeypatch):
    with pytest.raises(RecblrError, match="sparse_embeddings True: must be False with --loss ce"):
        TrainConfig(loss="ce", sparse_embeddings=True)
    data = load_dataset(str(small_inter))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RecblrError, match="sparse_embeddings: not with several processes"):
        train(data, ModelConfig(n_items=data.n_items, dim=8), TrainConfig(loss="bpr", sparse_embeddings=True))
