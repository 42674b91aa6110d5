"""recblr-export: outputs, --verify, precisions and one clear error per bad input."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from recblr.export import cell_metadata
from recblr.export.cell import RecBLRCell
from recblr.export.cli import main
from recblr.runtime import contract as C


def leftovers(folder):
    return [p.name for p in folder.rglob("*") if ".tmp-" in p.name]


def test_default_output_next_to_checkpoint(trained_checkpoint, trained, capsys):
    out = trained_checkpoint.parent / "cell.onnx"
    assert main([str(trained_checkpoint)]) == 0
    assert out.is_file()
    meta = cell_metadata(onnx.load(str(out)))
    assert json.loads(meta[C.META_ITEMS]) == trained.item_ids
    # --top-k defaults to 100, capped at the catalog size.
    assert int(meta[C.META_TOP_K]) == min(100, trained.config.n_items)
    assert "wrote" in capsys.readouterr().out


def test_verify_on_held_out_data(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "nested" / "dir" / "cell.onnx"
    rc = main([str(trained_checkpoint), "-o", str(out), "--top-k", "5", "--verify", "--verify-users", "20"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "identical" in text
    assert int(cell_metadata(onnx.load(str(out)))[C.META_TOP_K]) == 5


def test_verify_falls_back_to_random_histories(trained, tmp_path, capsys):
    from recblr.checkpoint import save_checkpoint

    ck = tmp_path / "nodata.pt"
    save_checkpoint(ck, trained.model, trained.item_ids, trained.user_ids, {}, {}, {})
    assert main([str(ck), "--verify", "--verify-users", "8"]) == 0
    assert "random histories" in capsys.readouterr().out


def test_verify_failure_exits_1_and_writes_nothing(trained_checkpoint, tmp_path, monkeypatch, capsys):
    original = RecBLRCell.scores

    def broken(self, h, exclude):  # a cell that drifts from the model
        return original(self, h * 1.01, exclude)

    monkeypatch.setattr(RecBLRCell, "scores", broken)
    out = tmp_path / "cell.onnx"
    rc = main([str(trained_checkpoint), "-o", str(out), "--verify", "--verify-users", "10"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "verification failed" in err and "not written" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--fp16", "--int8"])
def test_reduced_precision_variants(trained_checkpoint, trained, tmp_path, flag, capsys):
    out = tmp_path / "cell.onnx"
    assert main([str(trained_checkpoint), "-o", str(out), flag, "--verify", "--top-k", "10"]) == 0
    assert "agreement" in capsys.readouterr().out
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    meta = cell_metadata(model)
    assert meta["recblr.precision"] == flag[2:]
    # The interface is unchanged: state and scores float32.
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types[C.INPUT_STATE] == types[C.OUTPUT_NEXT_STATE] == onnx.TensorProto.FLOAT
    assert types[C.OUTPUT_TOP_SCORES] == onnx.TensorProto.FLOAT


def test_fp16_and_int8_together_is_an_error(trained_checkpoint, tmp_path, capsys):
    assert main([str(trained_checkpoint), "-o", str(tmp_path / "c.onnx"), "--fp16", "--int8"]) == 2
    assert "pick one" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("recblr-export: error:")
    return err[0]


def test_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x00garbage" * 100)
    assert main([str(bad)]) == 2
    assert "model.pt" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_missing_checkpoint(tmp_path, capsys):
    assert main([str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_incompatible_checkpoint_version(trained_checkpoint, tmp_path, capsys):
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["format_version"] = 999
    ck = tmp_path / "future.pt"
    torch.save(payload, ck)
    assert main([str(ck)]) == 2
    assert "version" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.pt"]


@pytest.mark.parametrize("kind", ["parent_is_file", "is_directory", "read_only_dir"])
def test_unwritable_output(trained_checkpoint, tmp_path, kind, capsys):
    import os

    if kind == "read_only_dir" and os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    (tmp_path / "afile").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    target = {
        "parent_is_file": tmp_path / "afile" / "cell.onnx",
        "is_directory": tmp_path,
        "read_only_dir": ro / "cell.onnx",
    }[kind]
    try:
        assert main([str(trained_checkpoint), "-o", str(target)]) == 2
        one_error_line(capsys)
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "ro"]
    finally:
        ro.chmod(0o700)
    assert leftovers(trained_checkpoint.parent) == []


def test_usage_error_exit_code(capsys):
    assert main(["--no-such-flag"]) == 2
    assert main(["--help"]) == 0
