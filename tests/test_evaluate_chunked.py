"""Chunked full ranking equals the one-matrix ranking, ties included, for any chunk size."""

import numpy as np
import pytest
import torch

from recblr.config import ModelConfig
from recblr.evaluate import chunked_ranks, history_ranks, ranks_of_targets
from recblr.model import RecBLR


def _full_ranks(h, emb, targets):
    scores = h @ emb.t()
    scores[:, 0] = float("-inf")
    return ranks_of_targets(scores, targets)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_chunked_ranks_equal_full_matrix(block):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(53, 8, generator=g)
    h = torch.randn(9, 8, generator=g)
    targets = torch.randint(1, 53, (9,), generator=g)
    assert chunked_ranks(h, emb, targets, block).tolist() == _full_ranks(h, emb, targets).tolist()


def test_ties_favour_the_target_across_chunks():
    # Small integers: every score is exact, so ties are exact. Row 5 duplicates row 2 (target),
    # rows 7 and 9 outscore it; with chunks of 3 items the tie and the winners sit in other chunks.
    emb = torch.zeros(11, 2)
    emb[1:] = torch.tensor([[1.0, 0.0]]) * torch.arange(1, 11).view(-1, 1) % 4
    emb[2] = emb[5] = torch.tensor([2.0, 0.0])
    emb[7] = emb[9] = torch.tensor([5.0, 0.0])
    h = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([2])
    full = _full_ranks(h, emb, t)
    assert full.item() == 1 + int((emb[1:, 0] > 2.0).sum())
    for block in (1, 3, 4, 100):
        assert chunked_ranks(h, emb, t, block).tolist() == full.tolist()


def test_history_ranks_do_not_depend_on_the_block():
    torch.manual_seed(0)
    model = RecBLR(ModelConfig(n_items=40, dim=8, dropout=0.0)).eval()
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, 41, size=int(n)) for n in rng.integers(1, 12, size=15)]
    tgt = rng.integers(1, 41, size=15)
    with torch.no_grad():
        ref = []
        for hh, t in zip(hist, tgt, strict=True):
            x = torch.as_tensor(hh).view(1, -1)
            s = model.item_scores(model.last_hidden(x, torch.tensor([len(hh)])))
            ref.append(int(ranks_of_targets(s, torch.tensor([int(t)]))[0]))
    for block in (5, 1 << 22):
        got = history_ranks(model, hist, tgt, "stream", 200, block=block)
        assert got.tolist() == ref
