"""The CLI end to end on small files, as a user runs it (subprocess, real exit codes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def recblr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recblr", *args], capture_output=True, text=True, cwd=cwd)


def test_train_then_evaluate(small_inter: Path, tmp_path: Path):
    out = tmp_path / "m.pt"
    r = recblr("train", "--data", str(small_inter), "--out", str(out), "--epochs", "2", "--max-len", "8",
               "--batch-size", "64", "--dim", "8", "--metrics-json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "epoch   1 | loss" in r.stderr and "valid NDCG@10" in r.stderr
    assert set(json.loads(r.stdout)["test"]) == {"window", "stream"}
    assert "test NDCG@10 stream - window:" in r.stderr and "paired over users" in r.stderr
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["epochs"] == 2 and set(saved["stream_minus_window_test"]) >= {"ndcg@10", "standard_error"}
    r = recblr("evaluate", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["split"] == "test" and 0 <= res["stream"]["ndcg@10"] <= 1 and "hr@20" in res["window"]
    gap = res["stream_minus_window"]
    assert gap["ndcg@10"] == pytest.approx(res["stream"]["ndcg@10"] - res["window"]["ndcg@10"], abs=1e-12)
    r = recblr("evaluate", str(out), "--split", "valid", "--mode", "window", "--data", str(small_inter))
    assert r.returncode == 0 and set(json.loads(r.stdout)) >= {"window"}
    assert "stream_minus_window" not in json.loads(r.stdout)


def test_train_sampled_with_sparse_embeddings(small_inter: Path, tmp_path: Path):
    r = recblr("train", "--data", str(small_inter), "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--max-len", "8",
               "--batch-size", "64", "--dim", "8", "--loss", "sampled", "--negatives", "16", "--sparse-embeddings")
    assert r.returncode == 0, r.stderr
    r = recblr("train", "--data", str(small_inter), "--out", str(tmp_path / "m2.pt"), "--epochs", "1",
               "--sparse-embeddings")
    assert r.returncode == 2 and "sparse" in r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "make, args, message",
    [
        (None, ["train", "--data", "missing.inter"], "no such file"),
        ("user_id:token\tthing:token\ttimestamp:float\n1\t2\t3\n", ["train", "--data", "f.inter"], "no item column"),
        ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnoon\n", ["train", "--data", "f.inter"], "not a number"),
        ("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n", ["train", "--data", "f.inter"], "after the 5-core filter"),
        ("garbage", ["evaluate", "f.inter"], "not a readable recblr checkpoint"),
        (None, ["train", "--max-len", "0"], "max_len 0: must be >= 1"),
        (None, ["train", "--layers", "0"], "n_layers 0: must be >= 1"),
        (None, ["train", "--conv-width", "0"], "conv_width 0: must be >= 1"),
        (None, ["train", "--dropout", "1.5"], "dropout 1.5: must be in [0, 1)"),
        (None, ["train", "--batch-size", "0"], "batch_size 0: must be >= 1"),
        (None, ["train", "--epochs", "0"], "epochs 0: must be >= 1"),
        (None, ["train", "--out", "."], "is a directory"),
        (None, ["train", "--metrics-json", "/dev/null/m.json"], "cannot write there"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path: Path, make, args, message):
    if make is not None:
        (tmp_path / "f.inter").write_text(make)
    r = recblr(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_entry_points_help():
    for args in (["--help"], ["train", "--help"], ["data", "fetch", "--help"], ["export", "--help"],
                 ["serve", "--help"], ["score", "--help"]):
        r = recblr(*args)
        assert r.returncode == 0, r.stderr


def test_subcommands_are_the_standalone_commands():
    from typer.testing import CliRunner

    from recblr.cli import app
    from recblr.export import cli as export_cli
    from recblr.runtime import cli as runtime_cli

    registered = {c.name: c.callback for c in app.registered_commands}
    assert registered["export"] is export_cli.export
    assert registered["serve"] is runtime_cli.serve and registered["score"] is runtime_cli.score
    runner = CliRunner()
    ours = runner.invoke(app, ["export", "--help"], prog_name="recblr")
    theirs = runner.invoke(export_cli.app, ["--help"], prog_name="recblr export")
    assert ours.exit_code == theirs.exit_code == 0 and ours.output == theirs.output


TRAINING = (["train"], ["evaluate", "m.pt"], ["export", "m.pt"])
DATA = (["data", "info", "ml-100k"], ["data", "fetch", "ml-100k"])


@pytest.mark.parametrize(("blocked", "commands"), [(("torch", "triton", "onnx", "onnxscript"), TRAINING),
                                                   (("pyarrow",), TRAINING + DATA)])
def test_without_the_train_extra_commands_name_it(tmp_path: Path, blocked: tuple[str, ...], commands):
    import os

    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({blocked!r}))\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    probe = subprocess.run([sys.executable, "-c", f"import {blocked[0]}"], env=env, capture_output=True)
    assert probe.returncode != 0, f"the {blocked[0]} blocker is not active"
    r = subprocess.run([sys.executable, "-m", "recblr", "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "recblr[train]" in r.stdout, r.stderr
    for args in commands:
        r = subprocess.run([sys.executable, "-m", "recblr", *args], env=env, capture_output=True, text=True,
                           cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
        assert f"needs {blocked[0]}" in r.stderr and "pip install 'recblr[train]'" in r.stderr


def test_fetch_from_a_bad_wheel_is_a_clear_error(tmp_path: Path):
    import zipfile

    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
    r = subprocess.run([sys.executable, "-m", "recblr", "data", "fetch", "ml-100k", "--wheel", str(wheel), "--force"],
                       capture_output=True, text=True, env={**__import__("os").environ, "RECBLR_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode == 2 and "not a recbole 1.2.1 wheel" in r.stderr


def test_unavailable_scan_backend_is_a_clear_error(small_inter: Path):
    import os

    env = {**os.environ, "RECBLR_SCAN_BACKEND": "warp-drive"}
    r = subprocess.run([sys.executable, "-m", "recblr", "train", "--data", str(small_inter), "--epochs", "1",
                        "--out", str(small_inter.parent / "m.pt")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "RECBLR_SCAN_BACKEND" in r.stderr and "Traceback" not in r.stderr
