"""The exported file: valid ONNX, self-describing metadata, weights shared, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from recblr.errors import RecblrError
from recblr.export import RecBLRCell, build_cell, cell_metadata, export_cell, weights_sha256
from recblr.export.verify import compare_topk, cpu_session, reference_scores, step_session
from recblr.runtime import contract as C


def test_checker_full_check(random_cell):
    _, path = random_cell
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == [C.INPUT_ITEM, C.INPUT_STATE, C.INPUT_EXCLUDE]
    assert [o.name for o in model.graph.output] == [
        C.OUTPUT_NEXT_STATE,
        C.OUTPUT_TOP_ITEMS,
        C.OUTPUT_TOP_SCORES,
    ]
    types = {i.name: i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]}
    assert types[C.INPUT_ITEM] == onnx.TensorProto.INT64
    assert types[C.INPUT_STATE] == onnx.TensorProto.FLOAT
    assert types[C.INPUT_EXCLUDE] == onnx.TensorProto.INT64
    assert types[C.OUTPUT_TOP_ITEMS] == onnx.TensorProto.INT64
    assert types[C.OUTPUT_TOP_SCORES] == onnx.TensorProto.FLOAT
    # The batch is symbolic; the state width is fixed.
    state_dims = model.graph.input[1].type.tensor_type.shape.dim
    assert state_dims[0].dim_param and not state_dims[0].HasField("dim_value")
    assert state_dims[1].dim_value > 0


def test_metadata_describes_the_cell(trained, tmp_path):
    path = export_cell(trained, tmp_path / "cell.onnx", top_k=7, opset=18)
    model = onnx.load(str(path))
    meta = cell_metadata(model)
    cfg = trained.config
    assert meta[C.META_FORMAT] == C.FORMAT_NAME
    assert int(meta[C.META_FORMAT_VERSION]) == C.FORMAT_VERSION
    assert json.loads(meta[C.META_CONFIG]) == cfg.to_dict()
    assert int(meta[C.META_STATE_SIZE]) == cfg.state_size
    assert model.graph.input[1].type.tensor_type.shape.dim[1].dim_value == cfg.state_size
    assert int(meta[C.META_TOP_K]) == 7
    assert int(meta[C.META_OPSET]) == 18
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert json.loads(meta[C.META_ITEMS]) == trained.item_ids
    assert meta[C.META_WEIGHTS_SHA256] == weights_sha256(trained.model, "fp32")
    assert all(isinstance(v, str) for v in meta.values())


def test_weights_hash_follows_the_weights(tmp_path, make_model):
    a = export_cell(make_model(0), tmp_path / "a.onnx", top_k=5)
    b = export_cell(make_model(0), tmp_path / "b.onnx", top_k=5)
    c = export_cell(make_model(2), tmp_path / "c.onnx", top_k=5)
    d = export_cell(make_model(0), tmp_path / "d.onnx", top_k=3, opset=19)  # same weights, other K
    h = [cell_metadata(onnx.load(str(p)))[C.META_WEIGHTS_SHA256] for p in (a, b, c, d)]
    assert h[0] == h[1] == h[3] != h[2]


def test_item_ids_default_and_validation(tmp_path, make_model):
    model = make_model(0, n_items=12)
    path = export_cell(model, tmp_path / "cell.onnx", top_k=3)
    items = json.loads(cell_metadata(onnx.load(str(path)))[C.META_ITEMS])
    assert items == [str(i) for i in range(13)]
    with pytest.raises(RecblrError, match="item_ids"):
        export_cell(model, tmp_path / "bad.onnx", top_k=3, item_ids=["a", "b"])
    with pytest.raises(RecblrError, match="top-k"):
        export_cell(model, tmp_path / "bad.onnx", top_k=13)
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".*tmp*"))


def test_cell_shares_the_model_weights(make_model):
    model = make_model(0)
    cell = build_cell(model, top_k=5)
    assert isinstance(cell, RecBLRCell) and cell.model is model
    cell_params = {id(p) for p in cell.parameters()}
    assert cell_params == {id(p) for p in model.parameters()}
    item, state, excl = torch.tensor([3]), torch.zeros(1, model.cfg.state_size), torch.tensor([[-1]])
    with torch.no_grad():
        before = cell(item, state, excl)[2].clone()
        model.item_emb.weight.mul_(2.0)
        after = cell(item, state, excl)[2]
    assert not torch.allclose(before, after)


def test_train_mode_model_exports_eval_math(tmp_path, make_model):
    """Dropout never reaches the cell, and the caller's train/eval mode is left as it was."""
    model = make_model(3)
    model.train()
    path = export_cell(model, tmp_path / "cell.onnx", top_k=5)
    assert model.training
    hist = [np.array([4, 9, 2, 2, 7])]
    _, items, scores = step_session(cpu_session(path), hist)
    assert compare_topk(items, scores, reference_scores(model, hist)).ok


def test_external_data_beyond_the_inline_limit(tmp_path, make_model):
    """Past the protobuf limit the weights go to <name>.data; the cell works the same."""
    model = make_model(4)
    inline = export_cell(model, tmp_path / "inline.onnx", top_k=5)
    ext = export_cell(model, tmp_path / "big" / "cell.onnx", top_k=5, max_inline_bytes=0)
    assert (tmp_path / "big" / "cell.onnx.data").is_file()
    assert ext.stat().st_size < inline.stat().st_size
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["cell.onnx", "cell.onnx.data"]
    onnx.checker.check_model(str(ext), full_check=True)
    loaded = onnx.load(str(ext))
    assert cell_metadata(loaded)[C.META_WEIGHTS_SHA256] == cell_metadata(onnx.load(str(inline)))[C.META_WEIGHTS_SHA256]
    hist = [np.arange(1, 40) % 60 + 1]
    outs = [step_session(cpu_session(p), hist) for p in (inline, ext)]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_failed_check_leaves_nothing_and_keeps_old_file(tmp_path, make_model):
    model = make_model(0)
    path = export_cell(model, tmp_path / "cell.onnx", top_k=5)
    old = path.read_bytes()

    def refuse(tmp):
        assert tmp.is_file() and tmp != path
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        export_cell(make_model(5), path, top_k=5, check=refuse)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.onnx"]


@pytest.mark.parametrize("kind", ["parent_is_file", "is_directory"])
def test_unwritable_outputs(tmp_path, kind, make_model):
    model = make_model(0)
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "cell.onnx" if kind == "parent_is_file" else tmp_path
    with pytest.raises(RecblrError, match="cell.onnx|directory"):
        export_cell(model, target, top_k=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_not_a_model(tmp_path):
    with pytest.raises(RecblrError, match="expected a RecBLR"):
        export_cell(object(), tmp_path / "cell.onnx")
