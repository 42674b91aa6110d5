"""Training killed and resumed, as a user meets it: `recblr train` in a subprocess, SIGKILL at
random steps (mid-epoch and in the middle of a checkpoint write), SIGTERM, then `--resume`.
The resumed run must end with the uninterrupted run's weights and metrics, bit for bit (one
thread on both sides, so every reduction runs in the same order)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datafiles import synthetic_rows, write_inter

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
# bpr negatives, random window cuts and dropout: every random stream the loop draws from is used
TRAIN = ["--max-len", "8", "--batch-size", "32", "--dim", "8", "--seed", "3", "--epochs", "2",
         "--loss", "bpr", "--window-offsets", "random"]
_COUNTER = re.compile(r"^resume-(\d+)\.pt$")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recblr", "train", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def newest_counter(ck: Path) -> int:
    found = [int(m.group(1)) for f in os.listdir(ck) if (m := _COUNTER.match(f))] if ck.is_dir() else []
    return max(found, default=-1)


def result(tmp: Path, name: str) -> tuple[dict, dict]:
    """(weights, metrics without wall-clock fields) of a finished run."""
    weights = torch.load(tmp / f"{name}.pt", weights_only=True)["state_dict"]
    metrics = json.loads((tmp / f"{name}.json").read_text())
    metrics = {k: v for k, v in metrics.items() if "seconds" not in k}
    for row in metrics["history"]:
        row.pop("seconds")
    return weights, metrics


def assert_same_run(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    assert a[1] == b[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_inter(tmp_path_factory.mktemp("data") / "walk.inter", synthetic_rows())


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> tuple[dict, dict]:
    """The uninterrupted run, without any checkpointing."""
    tmp = tmp_path_factory.mktemp("reference")
    code, err = finish(start("--data", str(data), *TRAIN, "--out", str(tmp / "ref.pt"),
                             "--metrics-json", str(tmp / "ref.json")))
    assert code == 0, err
    return result(tmp, "ref")


def test_sigkill_mid_epoch_and_mid_write_then_resume_is_bitwise_identical(data: Path, reference, tmp_path: Path):
    seed = random.randrange(1 << 30)
    pick = random.Random(seed)
    ck = tmp_path / "ck"
    first = ["--data", str(data), *TRAIN, "--out", str(tmp_path / "run.pt"),
             "--metrics-json", str(tmp_path / "run.json"), "--checkpoint-dir", str(ck), "--save-every-min", "0"]
    resumed_from: list[str] = []

    # 1. SIGKILL after a random number of steps, at a random moment between two saves
    p = start(*first)
    kill_after = pick.randint(2, 14)
    while newest_counter(ck) < kill_after and p.poll() is None:
        time.sleep(0.002)
    time.sleep(pick.uniform(0.0, 0.1))
    p.kill()
    finish(p)
    assert p.returncode == -signal.SIGKILL, f"finished before the kill (seed {seed})"

    # 2. SIGKILL while a checkpoint is being written (its temp file exists); retried until one lands
    caught = False
    for _ in range(6):
        p = start("--resume", str(ck))
        while p.poll() is None and not list(ck.glob(".resume-*.tmp")):
            time.sleep(0.0005)
        p.kill()
        _, err = finish(p)
        resumed_from += re.findall(r"resuming from .*", err)
        assert p.returncode == -signal.SIGKILL, f"finished before the kill (seed {seed}): {err}"
        if list(ck.glob(".resume-*.tmp")):
            caught = True
            break
    assert caught, "never killed inside a checkpoint write in 6 tries"

    # 3. resume to the end
    code, err = finish(start("--resume", str(ck)))
    assert code == 0, err
    resumed_from += re.findall(r"resuming from .*", err)
    assert any(not s.endswith("step 0)") for s in resumed_from), resumed_from  # some resume was mid-epoch
    assert not list(ck.glob(".resume-*.tmp"))  # the killed writer's temp file is cleaned up
    assert_same_run(result(tmp_path, "run"), reference)


def test_sigterm_stops_soon_with_a_resumable_checkpoint_and_says_how_to_resume(data: Path, reference, tmp_path: Path):
    ck = tmp_path / "ck"
    p = start("--data", str(data), *TRAIN, "--out", str(tmp_path / "run.pt"),
              "--metrics-json", str(tmp_path / "run.json"), "--checkpoint-dir", str(ck))
    while newest_counter(ck) < 0 and p.poll() is None:  # the end of epoch 1: now inside epoch 2
        time.sleep(0.002)
    time.sleep(0.05)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    code, err = finish(p)
    assert time.monotonic() - t0 < 10
    assert code == 143, err
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"stopped by SIGTERM; resume with: recblr train --resume {ck}"), err
    code, err = finish(start("--resume", str(ck)))
    assert code == 0, err
    assert "resuming from" in err
    assert_same_run(result(tmp_path, "run"), reference)


def test_resume_refuses_other_settings_or_data_and_falls_back_past_a_damaged_file(tmp_path: Path):
    from typer.testing import CliRunner

    from recblr.cli import app

    def cli(*args: str) -> tuple[int, str]:  # in this process: these runs are about messages, not bits
        r = CliRunner().invoke(app, ["train", *args])
        return r.exit_code, " ".join(r.output.split())

    ck = tmp_path / "ck"
    local = write_inter(tmp_path / "walk.inter", synthetic_rows())
    base = ["--data", str(local), *TRAIN, "--epochs", "1", "--out", str(tmp_path / "m.pt"),
            "--checkpoint-dir", str(ck), "--save-every-min", "0"]
    code, err = cli(*base)
    assert code == 0, err

    code, err = cli("--resume", str(ck), "--dim", "16", "--lr", "0.01", "--epochs", "5")
    assert code == 2 and "--dim 16 (checkpoint: 8); --lr 0.01 (checkpoint: 0.001)" in err, err
    assert "--epochs" not in err  # may change on resume
    code, err = cli(*base)
    assert code == 2 and f"--checkpoint-dir {ck}: already holds a run's checkpoints" in err, err

    newest = sorted(ck.glob("resume-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn write
    code, err = cli("--resume", str(ck))
    assert code == 0, err
    assert f"{newest}: unreadable" in err and "resuming from the previous checkpoint" in err, err

    local.write_text(local.read_text().replace("\ti3\t", "\ti4\t"))  # the same file, other content
    code, err = cli("--resume", str(ck))
    assert code == 2 and "its training data is not at hand" in err, err
    code, err = cli("--resume", str(ck), "--data", str(local))
    assert code == 2 and "the prepared data differs from the checkpoint's" in err, err
