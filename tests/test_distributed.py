"""Training on two CPU processes (gloo), as users start it: `recblr train --nproc 2` and torchrun.

Dropout is 0 and the loss is full cross-entropy here: with those, one step on two ranks computes
the same gradient as one process on the whole batch, up to the order of float additions (each
rank sums its shard, then gloo adds the two). With dropout each rank draws its own masks, so
the curves agree in distribution, not number by number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import synthetic_rows, write_inter

from recblr.checkpoint import load_checkpoint
from recblr.distributed import World, shard

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
TRAIN = ["--max-len", "8", "--batch-size", "64", "--dim", "8", "--seed", "5", "--epochs", "2",
         "--dropout", "0", "--patience", "5"]


def recblr(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recblr", *args], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_shards_give_every_row_of_a_global_batch_to_exactly_one_rank():
    batch = np.arange(11)
    parts = [shard(batch, World(r, 3)) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(11))
    assert [len(p) for p in parts] == [4, 4, 3]


def test_a_rank_without_rows_gets_one_padding_row_that_trains_nothing():
    from recblr.distributed import shard_batch
    from recblr.train import Batch

    one = Batch(np.array([[3, 4, 0]]), np.array([2]), np.array([[4, 5, 0]]), [np.array([1, 2])])
    mine = shard_batch(one, World(0, 2))
    assert mine.n_pairs == 2 and mine.items.tolist() == [[3, 4, 0]] and mine.context[0].tolist() == [1, 2]
    empty = shard_batch(one, World(1, 2))
    assert empty.n_pairs == 0 and empty.items.shape == (1, 1) and len(empty.context[0]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """The same training on one process and on two."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_inter(tmp / "walk.inter", synthetic_rows(n_users=60))
    out = {}
    for n in (1, 2):
        r = recblr("train", "--data", str(data), *TRAIN, "--nproc", str(n), "--out", str(tmp / f"p{n}.pt"),
                   "--metrics-json", str(tmp / f"p{n}.json"), "--checkpoint-dir", str(tmp / f"ck{n}"))
        assert r.returncode == 0, r.stderr
        if n == 2:
            assert r.stderr.count("valid NDCG@10") == 2  # rank 0 alone logs each epoch
        out[n] = tmp
    return out


def test_two_processes_follow_the_one_process_loss_curve(runs):
    tmp = runs[1]
    one, two = (json.loads((tmp / f"p{n}.json").read_text()) for n in (1, 2))
    assert [r["pairs"] for r in one["history"]] == [r["pairs"] for r in two["history"]]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w1 = torch.load(tmp / "p1.pt", weights_only=True)["state_dict"]
    w2 = torch.load(tmp / "p2.pt", weights_only=True)["state_dict"]
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-4), k


def test_the_two_process_checkpoint_loads_and_exports_like_any_other(runs):
    tmp = runs[1]
    from recblr.export.cli import main as export_main

    ckpt = load_checkpoint(tmp / "p2.pt")
    assert ckpt.metrics["complete"] and ckpt.train_config["seed"] == 5 and ckpt.config.dropout == 0
    assert export_main([str(tmp / "p2.pt"), "-o", str(tmp / "cell.onnx"), "--verify"]) == 0
    assert (tmp / "cell.onnx").stat().st_size > 0


def test_a_crashed_rank_stops_all_with_one_clear_error(runs, tmp_path: Path):
    data = runs[1] / "walk.inter"
    p = subprocess.Popen([sys.executable, "-m", "recblr", "train", "--data", str(data), *TRAIN, "--epochs", "50",
                          "--nproc", "2", "--out", str(tmp_path / "m.pt")],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ranks: list[int] = []
    deadline = time.monotonic() + 120
    while len(ranks) < 2 and time.monotonic() < deadline:
        ranks = [int(c) for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
        time.sleep(0.1)
    time.sleep(3)  # inside training
    os.kill(ranks[1], signal.SIGKILL)
    t0 = time.monotonic()
    _, err = p.communicate(timeout=120)
    assert time.monotonic() - t0 < 60
    assert p.returncode == 2
    assert err.strip().splitlines()[-1].endswith("rank 1 failed (signal 9); stopped the other ranks"), err
    for pid in ranks:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_torchrun_max_restarts_resumes_a_killed_rank_without_a_human(runs, tmp_path: Path):
    """Rank 1 is SIGKILLed mid-run; torchrun restarts both ranks, which find the checkpoints and
    resume: the run ends with the uninterrupted two-process run's weights, bit for bit."""
    tmp = runs[1]
    ck = tmp_path / "ck"
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "--max-restarts", "1", "-m", "recblr", "train", "--data", str(tmp / "walk.inter"), *TRAIN,
                          "--out", str(tmp_path / "m.pt"), "--metrics-json", str(tmp_path / "m.json"),
                          "--checkpoint-dir", str(ck), "--save-every-min", "0"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rank1 = None
    deadline = time.monotonic() + 180
    while rank1 is None and time.monotonic() < deadline:
        if len(list(ck.glob("resume-*.pt"))) >= 2:  # a few steps in
            for child in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split():
                if "RANK=1" in Path(f"/proc/{child}/environ").read_bytes().decode(errors="replace").split("\0"):
                    rank1 = int(child)
        time.sleep(0.05)
    assert rank1 is not None, "rank 1 never started training"
    os.kill(rank1, signal.SIGKILL)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "resuming from" in err
    ref = torch.load(tmp / "p2.pt", weights_only=True)["state_dict"]
    got = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    history = lambda path: [(r["loss"], r["valid_ndcg@10"]) for r in json.loads(path.read_text())["history"]]  # noqa: E731
    assert history(tmp_path / "m.json") == history(tmp / "p2.json")
