"""SASRec and GRU4Rec baselines: their one-event paths equal their full forward, they train in
RecBLR's harness on the same (prefix, next item) pairs, and they are ranked by the same evaluator."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import synthetic_rows, write_inter

from recblr.baselines import GRU4Rec, GRU4RecConfig, SASRec, SASRecConfig
from recblr.config import TrainConfig
from recblr.data import load_dataset
from recblr.evaluate import evaluate, metrics_from_ranks
from recblr.train import length_batches, sequence_windows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import baselines as harness  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("baselines") / "synthetic.inter"
    write_inter(path, synthetic_rows(n_users=30, n_items=20, length=(6, 30)))
    return load_dataset(str(path), min_count=3)


def test_gru4rec_step_and_carried_state_equal_forward():
    torch.manual_seed(0)
    m = GRU4Rec(GRU4RecConfig(n_items=20)).eval()
    x = torch.randint(1, 21, (3, 9))
    h, end = m(x)
    state = m.initial_state(3)
    for t in range(9):
        out, state = m.step(x[:, t], state)
        torch.testing.assert_close(out, h[:, t])
    torch.testing.assert_close(state, end)
    # A window that starts mid-history from the state its earlier items leave.
    _, mid = m(x[:, :4])
    h2, end2 = m(x[:, 4:], mid)
    torch.testing.assert_close(h2, h[:, 4:])
    torch.testing.assert_close(end2, end)
    # The state after each row's length ignores the padding behind it.
    _, short = m(x, lengths=torch.tensor([9, 4, 0]))
    torch.testing.assert_close(short[1], mid[1])
    torch.testing.assert_close(short[2], torch.zeros(m.cfg.dim))


def test_sasrec_kv_cache_step_equals_forward_and_padding_stays_behind():
    torch.manual_seed(0)
    m = SASRec(SASRecConfig(n_items=20, max_len=12)).eval()
    x = torch.randint(1, 21, (3, 12))
    h, _ = m(x)
    _, cache = m.prefill(x[:, :5])
    for t in range(5, 12):
        out, cache = m.step(x[:, t], cache, t)
        torch.testing.assert_close(out, h[:, t])
    padded = x.clone()
    padded[:, 7:] = 0
    torch.testing.assert_close(m(padded)[0][:, :7], h[:, :7])
    with pytest.raises(ValueError, match="max_len"):
        m.step(x[:, 0], cache, 12)
    with pytest.raises(ValueError, match="max_len"):
        m(torch.ones(1, 13, dtype=torch.long))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "recblr"])
def test_every_model_trains_on_exactly_the_whole_sequence_pairs(data, name):
    """Windows of 4 (so long users are cut): each epoch's targets are every training pair once."""
    torch.manual_seed(0)
    model = harness.build(name, data.n_items, max_len=4).train()
    seqs = data.train_sequences()
    windows = sequence_windows(seqs, 4)
    targets = []
    for batch in length_batches(np.array([w[2] for w in windows]), 16, np.random.default_rng(0)):
        h, t = harness.window_batch(model, seqs, [windows[i] for i in batch], 4, torch.device("cpu"))
        assert h.shape == (len(t), 64)
        targets.append(t.numpy())
    expected = np.sort(np.concatenate([s[1:] for s in seqs]))
    np.testing.assert_array_equal(np.sort(np.concatenate(targets)), expected)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_baseline_trains_a_step(data, name):
    torch.manual_seed(0)
    model = harness.build(name, data.n_items, max_len=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(max_len=8, batch_size=64)
    losses = [harness.train_epoch(model, opt, data.train_sequences(), np.random.default_rng(0), cfg, "cpu")
              for _ in range(3)]  # fmt: skip
    assert all(np.isfinite(loss) for loss, _ in losses)
    assert losses[-1][0] < losses[0][0]
    assert losses[0][1] == sum(len(s) - 1 for s in data.train_sequences())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_harness_fits_with_early_stopping_and_ranks_with_the_evaluator(data):
    cfg = replace(TrainConfig(max_len=8, batch_size=64, epochs=30, patience=2, seed=0, device="cpu"), lr=1e-2)
    logs = []
    model, history = harness.fit("gru4rec", data, cfg, log=logs.append)
    assert 1 <= len(history) <= 30
    scores = [h["valid_ndcg@10"] for h in history]
    best = max(scores)
    if len(history) < 30:  # stopped exactly `patience` epochs after the (first) best one
        assert len(history) == scores.index(best) + 1 + 2 and "early stop" in logs[-1]
    r = harness.ranks(model, data, ("stream", "window"), 8)
    # The restored model is the best epoch's: its validation score is the best one seen.
    valid = metrics_from_ranks(np.array(r["valid"]["stream"]))
    assert valid["ndcg@10"] == pytest.approx(best)
    assert metrics_from_ranks(np.array(r["test"]["window"])) == evaluate(model, data, "test", ("window",), 8)["window"]


def test_harness_ranks_ties_in_the_targets_favour():
    """Zero item embeddings: every item scores the same, so every target ranks first."""
    seqs = [np.array([1, 2, 3, 1, 2]), np.array([3, 2, 1, 3])]
    from recblr.data import SequenceData

    offsets = np.array([0, len(seqs[0]), len(seqs[0]) + len(seqs[1])])
    d = SequenceData(["[PAD]", "a", "b", "c"], ["u0", "u1"], np.concatenate(seqs), offsets, {})
    m = SASRec(SASRecConfig(n_items=3, max_len=8))
    with torch.no_grad():
        m.item_emb.weight.zero_()
    r = harness.ranks(m, d, ("window",), 8)
    assert r["test"]["window"] == [1, 1]


def test_paired_summary_against_recblr():
    ranks = {"valid": {"window": [1, 2], "stream": [1, 2]}, "test": {"window": [1, 3], "stream": [1, 1]}}
    base = {"valid": {"window": [2, 2]}, "test": {"window": [2, 20]}}

    def run(r):
        return {"ranks": r, "parameters": 1, "seconds_per_epoch": 1.0, "epochs": 3, "best_epoch": 1,
                "stopped_early": True}  # fmt: skip

    s = harness.summarize({"recblr": {1: run(ranks)}, "sasrec": {1: run(base)}, "gru4rec": {}})
    p = s["paired_vs_recblr"]["sasrec_window_minus_recblr_window"]
    assert p["diff"] == pytest.approx(((1 / np.log2(3) - 1) + (0 - 0.5)) / 2)
    g = s["recblr_stream_minus_window_test"]
    assert g["diff"] == pytest.approx((1 - 0.5) / 2) and g["passes_within_2se"]
