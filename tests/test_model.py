import math

import pytest
import torch

from recblr.config import ModelConfig
from recblr.model import RecBLR, pack_state, parameter_count, split_state


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RecBLR(ModelConfig(n_items=50, dim=16, n_layers=2, expand=2, conv_width=4, dropout=0.2)).eval()


def test_causality(model):
    items = torch.randint(1, 51, (3, 12))
    h, _ = model(items)
    for t in range(11):
        changed = items.clone()
        changed[:, t + 1] = (changed[:, t + 1] % 50) + 1
        h2, _ = model(changed)
        assert torch.allclose(h[:, : t + 1], h2[:, : t + 1], atol=1e-6)
        assert not torch.allclose(h[:, t + 1], h2[:, t + 1], atol=1e-6)


def test_right_padding_never_changes_last_real_output(model):
    items = torch.randint(1, 51, (2, 9))
    lengths = torch.tensor([9, 9])
    base = model.last_hidden(items, lengths)
    padded = torch.cat([items, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    assert torch.allclose(model.last_hidden(padded, lengths), base, atol=1e-6)
    junk = torch.cat([items, torch.randint(1, 51, (2, 5))], dim=1)  # garbage after the end
    assert torch.allclose(model.last_hidden(junk, lengths), base, atol=1e-6)
    _, s_pad = model(padded, lengths=lengths)
    _, s = model(items)
    assert torch.allclose(s_pad, s, atol=1e-6)


def test_state_carries_across_windows(model):
    items = torch.randint(1, 51, (3, 20))
    full, s_full = model(items)
    h1, s1 = model(items[:, :7])
    h2, s2 = model(items[:, 7:], s1)
    assert torch.allclose(torch.cat([h1, h2], 1), full, atol=1e-5)
    assert torch.allclose(s2, s_full, atol=1e-5)
    # per-row lengths: state after 3 and 5 items equals encoding exactly those
    _, s_len = model(items[:2, :5], lengths=torch.tensor([3, 5]))
    assert torch.allclose(s_len[0], model(items[:1, :3])[1][0], atol=1e-6)
    assert torch.allclose(s_len[1], model(items[1:2, :5])[1][0], atol=1e-6)


@pytest.mark.parametrize("conv_width", [1, 4])
def test_step_is_forward_one_position_at_a_time(conv_width: int):
    torch.manual_seed(1)
    model = RecBLR(ModelConfig(n_items=30, dim=8, n_layers=2, conv_width=conv_width)).eval()
    items = torch.randint(1, 31, (3, 9))
    _, start = model(items[:, :4])  # a non-empty state to continue from
    full, s_full = model(items[:, 4:], start)
    state = start
    with torch.no_grad():
        for t in range(4, 9):
            h, state = model.step(items[:, t], state)
            assert torch.allclose(h, full[:, t - 4], atol=1e-5)
    assert torch.allclose(state, s_full, atol=1e-5)


def test_split_and_pack_state_round_trip():
    cfg = ModelConfig(n_items=5, dim=4, n_layers=3, expand=2, conv_width=3)
    state = torch.randn(2, cfg.state_size)
    layers = split_state(state, cfg)
    assert len(layers) == 3 and layers[1].conv.shape == (2, 2, 8) and layers[1].h.shape == (2, 8)
    assert torch.equal(layers[0].h, state[:, 16:24])  # per layer: K-1 conv inputs, then h
    assert torch.equal(pack_state(layers), state)


def test_lambda_init_range():
    cfg = ModelConfig(n_items=10)
    m = RecBLR(cfg)
    for layer in m.layers:
        a = torch.exp(-torch.nn.functional.softplus(layer.recurrent.lru.lam.detach()))
        assert a.shape == (cfg.inner_dim,)
        assert math.isclose(a.min().item(), 0.9, rel_tol=1e-5)
        assert math.isclose(a.max().item(), 0.999, rel_tol=1e-5)
        assert torch.all(a[1:] >= a[:-1])  # spread monotonically across channels


@pytest.mark.parametrize("cfg", [ModelConfig(n_items=100), ModelConfig(n_items=7, dim=8, n_layers=3, expand=3, conv_width=2)])
def test_parameter_count_matches_formula(cfg):
    assert sum(p.numel() for p in RecBLR(cfg).parameters()) == parameter_count(cfg)


def test_default_state_size_is_1024_floats():
    assert ModelConfig(n_items=1).state_size == 1024  # spec: 2 x (3*128 + 128)


def test_padding_never_scored(model):
    scores = model.item_scores(model.last_hidden(torch.tensor([[3, 4]]), torch.tensor([2])))
    assert scores[0, 0] == float("-inf") and torch.isfinite(scores[0, 1:]).all()


def test_init_statistics():
    m = RecBLR(ModelConfig(n_items=2000, dim=64))
    w = m.item_emb.weight[1:].detach()
    assert abs(w.std().item() - 0.02) < 0.002 and torch.all(m.item_emb.weight[0] == 0)
    assert torch.all(m.layers[0].ffn.w1.bias == 0)
