"""What the engine tests compare against: `recblr score` on the same histories (importable:
pytest adds tests/ to sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCORE = "from recblr.runtime.cli import score_main; score_main()"  # what `recblr score` runs


def histories(seed: int, n_users: int = 40) -> list[tuple[str, list[str]]]:
    """Random histories over the runtime test cell's items (1001..1060), lengths 0..30, with
    an id the cell does not know mixed into some (scored with unknown items skipped)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        items = [str(1001 + int(i)) for i in rng.integers(0, 60, int(rng.integers(0, 31)))]
        if u % 7 == 3:
            items.insert(int(rng.integers(0, len(items) + 1)), "unknown-item")
        out.append((f"u{u}", items))
    return out


def recblr_score(cell: Path, hist, tmp_path: Path, *args: str) -> dict[str, dict]:
    """What the `recblr score` command line writes for these histories, per user."""
    src, dst = tmp_path / "histories.jsonl", tmp_path / "scored.jsonl"
    src.write_text("".join(json.dumps({"user": u, "items": h}) + "\n" for u, h in hist))
    cmd = [sys.executable, "-c", SCORE, "--onnx", str(cell), "-i", str(src), "-o", str(dst)]
    subprocess.run([*cmd, *args], check=True, capture_output=True, timeout=120)
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    return {r["user"]: r for r in rows}


K = 5  # the top-K every engine test asks for


def reference(cell: Path, seed: int, tmp_path: Path, *args: str) -> tuple[list, dict[str, dict]]:
    """(histories, what `recblr score` answers for them): an engine test's input and oracle."""
    hist = histories(seed)
    return hist, recblr_score(cell, hist, tmp_path, "--k", str(K), "--unknown-items", "skip", *args)


def assert_same_answers(got: dict[str, tuple[list, list]], want: dict[str, dict]) -> None:
    """user -> (items, scores) from an engine equals the command line's, user by user."""
    assert sorted(got) == sorted(want)
    for user, (items, scores) in got.items():
        assert list(items) == want[user]["items"], user
        np.testing.assert_allclose(list(scores), want[user]["scores"], rtol=1e-5, atol=1e-6)


def local_spark(app: str, memory: str, **conf: str):
    """A local[2] Spark on loopback with no UI, its Python workers on this interpreter."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    b = (
        SparkSession.builder.master("local[2]")
        .appName(app)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", memory)
    )
    for key, value in conf.items():
        b = b.config(key, value)
    session = b.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
