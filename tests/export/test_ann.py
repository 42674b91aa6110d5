"""`recblr-export --retrieval ann`: the retrieval cell, its index, and the recall check."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from recblr.errors import RecblrError
from recblr.export.ann import export_retrieval, item_vectors, recall_at_10, user_vectors
from recblr.export.cli import main
from recblr.export.onnx_export import weights_sha256
from recblr.runtime.ann import OUTPUT_USER_VECTOR, index_paths


def test_cli_writes_cell_and_index_bound_by_weight_hash(trained_checkpoint, trained, tmp_path, capsys):
    out = tmp_path / "cell.onnx"
    rc = main([str(trained_checkpoint), "-o", str(out), "--retrieval", "ann", "--verify", "--top-k", "10"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "ANN recall@10 1.000" in text  # a 40-item catalog: the beam covers every item
    index, info = index_paths(out)
    desc = json.loads(info.read_text())
    assert index.is_file() and desc["weights_sha256"] == weights_sha256(trained.model)
    assert desc["n_items"] == trained.config.n_items
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["next_state", OUTPUT_USER_VECTOR]
    # the cell's user vector is the model's hidden vector after the item
    model = trained.model.eval()
    state = np.zeros((3, trained.config.state_size), np.float32)
    _, vec = sess.run(None, {"item": np.array([1, 2, 3]), "state": state})
    with torch.no_grad():
        ref = model.last_hidden(torch.tensor([[1], [2], [3]]), torch.tensor([1, 1, 1])).numpy()
    np.testing.assert_allclose(vec, ref, atol=1e-4)


def test_ann_option_errors(trained_checkpoint, tmp_path, capsys):
    base = [str(trained_checkpoint), "-o", str(tmp_path / "c.onnx")]
    assert main([*base, "--retrieval", "ivf"]) == 2  # a choice typer checks: its usage error
    assert "--retrieval" in capsys.readouterr().err
    assert main([*base, "--retrieval", "ann", "--fp16"]) == 2
    assert main([*base, "--retrieval", "ann", "--ann-m", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("recblr-export: error:") for line in err)
    assert not (tmp_path / "c.onnx").exists()


def test_low_recall_refuses_before_writing(make_model, tmp_path):
    model = make_model(3, n_items=3000)
    hist = [np.random.default_rng(i).integers(1, 3001, size=5) for i in range(40)]
    out = tmp_path / "cell.onnx"

    def verify(ann):
        recall = recall_at_10(ann, user_vectors(model, hist), item_vectors(model))
        assert recall < 0.95  # a narrow beam on a sparse graph misses neighbours
        raise RecblrError(f"recall {recall:.3f}")

    with pytest.raises(RecblrError, match="recall"):
        export_retrieval(model, [str(i) for i in range(3001)], out, top_k=10, opset=18, m=4,
                         ef_construction=10, ef_search=10, verify=verify)
    assert list(tmp_path.iterdir()) == []


def test_export_cli_defaults_are_the_index_builders():
    """The CLI stays torch-free to import, so it spells the build defaults itself: keep them one."""
    import inspect

    from recblr.export import ann
    from recblr.export.cli import export

    params = inspect.signature(export).parameters
    assert params["ann_m"].default == ann.DEFAULT_M
    assert params["ann_ef_construction"].default == ann.DEFAULT_EF_CONSTRUCTION
    assert params["ann_ef"].default == ann.DEFAULT_EF_SEARCH
