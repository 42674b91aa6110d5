"""The losses: sampled softmax against the full softmax it estimates, and its samplers."""

from pathlib import Path

import numpy as np
import pytest
import torch

from recblr.config import ModelConfig, TrainConfig
from recblr.data import load_dataset
from recblr.errors import RecblrError
from recblr.losses import NegativeSampler, full_cross_entropy, make_loss, sampled_softmax
from recblr.train import train


def _problem(n_items=60, dim=8, pairs=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_items + 1, dim, generator=g)
    h = torch.randn(pairs, dim, generator=g)
    t = torch.randint(1, n_items + 1, (pairs,), generator=g)
    return h, t, emb


def test_every_item_once_under_uniform_q_is_the_full_cross_entropy():
    h, t, emb = _problem()
    q = NegativeSampler.build("uniform", 60)
    every = torch.arange(1, 61)  # holds each target too: the accidental hit must be masked
    assert torch.allclose(sampled_softmax(h, t, emb, every, q.log_q), full_cross_entropy(h, t, emb), atol=1e-5)


def _grad(loss_fn, h):
    h = h.clone().requires_grad_(True)
    loss_fn(h).backward()
    return h.grad


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_log_q_corrected_gradient_estimates_the_full_gradient(kind):
    h, t, emb = _problem()
    seqs = [np.repeat(np.arange(1, 61), np.arange(60, 0, -1))]  # item i seen 61 - i times
    q = NegativeSampler.build(kind, 60, seqs, alpha=1.0)
    full = _grad(lambda x: full_cross_entropy(x, t, emb), h)
    gen = torch.Generator().manual_seed(1)
    draws = [q.sample(2000, gen) for _ in range(20)]
    corrected = torch.stack([_grad(lambda x, n=n: sampled_softmax(x, t, emb, n, q.log_q), h) for n in draws]).mean(0)
    flat = torch.zeros_like(q.log_q)
    naive = torch.stack([_grad(lambda x, n=n: sampled_softmax(x, t, emb, n, flat), h) for n in draws]).mean(0)
    err = (corrected - full).norm() / full.norm()
    assert err < 0.05
    if kind == "popularity":  # without the correction a skewed proposal biases the gradient
        assert (naive - full).norm() / full.norm() > 4 * err


def test_popularity_sampler_follows_its_proposal_and_never_draws_padding():
    seqs = [np.array([1, 1, 1, 1, 2, 2, 3])]
    q = NegativeSampler.build("popularity", 4, seqs, alpha=1.0)  # (count + 1): 5, 3, 2, 1
    ids = q.sample(200_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=5).double() / ids.numel()
    assert freq[0] == 0
    assert torch.allclose(freq[1:], torch.tensor([5, 3, 2, 1], dtype=torch.float64) / 11.0, atol=0.005)
    assert torch.allclose(q.log_q[1:].exp().double(), torch.tensor([5, 3, 2, 1], dtype=torch.float64) / 11.0, atol=1e-6)


def test_make_loss_rejects_bad_choices():
    emb = torch.nn.Embedding(5, 2)
    with pytest.raises(RecblrError, match="--loss"):
        make_loss("softmax", emb)
    with pytest.raises(RecblrError, match="--negatives"):
        make_loss("sampled", emb, negatives=0, sampler=NegativeSampler.build("uniform", 4))
    with pytest.raises(RecblrError, match="--sampler"):
        NegativeSampler.build("zipf", 4)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_training_with_sampled_softmax_learns(small_inter: Path, sampler: str):
    data = load_dataset(str(small_inter))
    cfg = TrainConfig(epochs=6, patience=6, batch_size=128, loss="sampled", negatives=16, sampler=sampler,
                      device="cpu", max_len=20)
    result = train(data, ModelConfig(n_items=data.n_items, dim=16, dropout=0.0), cfg)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert np.isfinite(result.metrics["test"]["stream"]["ndcg@10"])
