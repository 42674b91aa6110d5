"""Fixtures for the export tests: small random and trained models, their exported cells."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from recblr.config import ModelConfig
from recblr.export import export_cell
from recblr.model import RecBLR

N_ITEMS = 60


def random_model(seed: int, *, wild: bool = False, n_items: int = N_ITEMS) -> RecBLR:
    """A small random model; `wild` redraws every weight with a large spread (stress test)."""
    torch.manual_seed(seed)
    model = RecBLR(ModelConfig(n_items=n_items, dim=16, n_layers=2, expand=2, conv_width=4))
    if wild:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lam"):
                    continue  # keep the decay rates in their trained range
                p.add_(torch.randn_like(p) * 0.3)
            model.item_emb.weight[0].zero_()
    return model.eval()


@pytest.fixture(scope="session")
def make_model():
    """The `random_model` factory (test modules cannot import conftest under importlib)."""
    return random_model


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A checkpoint trained a few epochs with recblr.train on a small synthetic RecBole .inter file.

    Users walk the catalog with a per-user stride, so the model learns a real pattern and its
    weights move well away from the initialisation. The data file stays at hand, so
    `--verify` can reload it from the checkpoint's spec.
    """
    from rich.console import Console

    from recblr.config import TrainConfig
    from recblr.data import load_dataset
    from recblr.train import train

    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(7)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(80):
        start, stride = rng.integers(1, 41), rng.integers(1, 4)
        for t in range(int(rng.integers(8, 30))):
            item = (start + stride * t) % 40 + 1
            if rng.random() < 0.2:
                item = int(rng.integers(1, 41))
            rows.append(f"u{u}\tm{item}\t{1000 + t}")
    data_file = root / "small.inter"
    data_file.write_text("\n".join(rows) + "\n")
    data = load_dataset(str(data_file))
    cfg = ModelConfig(n_items=data.n_items, dim=16, n_layers=2, dropout=0.1)
    tcfg = TrainConfig(epochs=4, patience=10, batch_size=64, max_len=30, eval_batch_size=256, device="cpu")
    ckpt = root / "model.pt"
    train(data, cfg, tcfg, out=ckpt, console=Console(file=io.StringIO()))
    return ckpt


@pytest.fixture(scope="session")
def trained(trained_checkpoint):
    from recblr.checkpoint import load_checkpoint

    return load_checkpoint(trained_checkpoint)


@pytest.fixture(scope="session")
def random_cell(tmp_path_factory):
    """(model, path) of a default-init random model's cell, top-10."""
    model = random_model(0)
    path = export_cell(model, tmp_path_factory.mktemp("random") / "cell.onnx", top_k=10)
    return model, path


@pytest.fixture(scope="session")
def wild_cell(tmp_path_factory):
    model = random_model(1, wild=True)
    path = export_cell(model, tmp_path_factory.mktemp("wild") / "cell.onnx", top_k=10)
    return model, path


@pytest.fixture(scope="session")
def trained_cell(trained, tmp_path_factory):
    path = export_cell(trained, tmp_path_factory.mktemp("trained_cell") / "cell.onnx", top_k=10)
    return trained.model, path
