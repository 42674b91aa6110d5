"""--opset: only opsets the exporter really produces are accepted, and the file says which."""

from __future__ import annotations

import onnx
import pytest

from recblr.errors import RecblrError
from recblr.export import MAX_OPSET, MIN_OPSET, cell_metadata, export_cell
from recblr.export import onnx_export as ox
from recblr.export.cli import main
from recblr.export.verify import random_histories, verify_cell
from recblr.runtime import contract as C


def graph_opset(model: onnx.ModelProto) -> int:
    return {o.domain: o.version for o in model.opset_import}[""]


def test_supported_range():
    assert MIN_OPSET == 18 and MAX_OPSET >= 21


@pytest.mark.parametrize("opset", [7, 16, 17, MAX_OPSET + 1, 29])
def test_cli_rejects_unsupported_opset(trained_checkpoint, tmp_path, opset, capsys):
    out = tmp_path / "cell.onnx"
    assert main([str(trained_checkpoint), "-o", str(out), "--opset", str(opset)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "\n" not in err and "Traceback" not in err, err  # one line, no converter output
    assert f"--opset {opset}" in err and f"{MIN_OPSET} to {MAX_OPSET}" in err
    assert "wrote" not in captured.out
    assert list(tmp_path.iterdir()) == []


def test_api_rejects_unsupported_opset(make_model, tmp_path):
    with pytest.raises(RecblrError, match=f"{MIN_OPSET} to {MAX_OPSET}"):
        export_cell(make_model(0), tmp_path / "cell.onnx", top_k=5, opset=7)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("opset", "flag"), [(MIN_OPSET, None), (21, None), (MAX_OPSET, None), (MAX_OPSET, "--int8")]
)
def test_metadata_opset_is_the_graph_opset(trained_checkpoint, trained, tmp_path, opset, flag, capsys):
    out = tmp_path / "cell.onnx"
    args = [str(trained_checkpoint), "-o", str(out), "--opset", str(opset), "--top-k", "5"]
    assert main(args + ([flag] if flag else [])) == 0
    captured = capsys.readouterr()
    assert f"opset {opset}," in captured.out
    assert "Traceback" not in captured.err and "version conversion" not in captured.err
    model = onnx.load(str(out))
    assert graph_opset(model) == opset
    assert cell_metadata(model)[C.META_OPSET] == str(opset)
    if flag is None:  # the converted graph still reproduces the model
        rep = verify_cell(out, trained.model, random_histories(trained.config.n_items, 8, seed=0))
        assert rep.ok, rep.problems


def test_graph_opset_differing_from_the_request_is_an_error(make_model, tmp_path, monkeypatch):
    """Should the exporter ignore the requested opset, nothing is written."""
    real_to_onnx = ox._to_onnx
    monkeypatch.setattr(ox, "_to_onnx", lambda cell, opset: real_to_onnx(cell, MIN_OPSET))
    with pytest.raises(RecblrError, match=f"--opset {MIN_OPSET + 1}: .*opset {MIN_OPSET} instead"):
        export_cell(make_model(0), tmp_path / "cell.onnx", top_k=5, opset=MIN_OPSET + 1)
    assert list(tmp_path.iterdir()) == []
