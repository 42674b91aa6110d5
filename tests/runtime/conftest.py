"""Fixtures of the runtime tests: small exported cells and a real server in a subprocess."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

N_ITEMS = 60
TOP_K = 10
ITEM_IDS = ["<pad>"] + [str(1000 + i) for i in range(1, N_ITEMS + 1)]


def _export(path: Path, seed: int, n_items: int = N_ITEMS, top_k: int = TOP_K, ids=None) -> Path:
    import torch

    from recblr.config import ModelConfig
    from recblr.model import RecBLR

    try:
        from recblr.export import export_cell
    except ImportError:  # the package may not re-export it yet
        from recblr.export.onnx_export import export_cell

    torch.manual_seed(seed)
    model = RecBLR(ModelConfig(n_items=n_items, dim=16, n_layers=2)).eval()
    return export_cell(model, path, top_k=top_k, item_ids=ids or ITEM_IDS)


@pytest.fixture(scope="session")
def cells(tmp_path_factory) -> dict[str, Path]:
    """'a' and 'b': two random cells of the same shape (different weights, different hashes)."""
    d = tmp_path_factory.mktemp("cells")
    return {"a": _export(d / "a.onnx", 1), "b": _export(d / "b.onnx", 2)}


@pytest.fixture(scope="session")
def cell(cells) -> Path:
    return cells["a"]


@functools.lru_cache(maxsize=8)
def _session(cell_path: str):
    import onnxruntime as ort

    return ort.InferenceSession(cell_path, providers=["CPUExecutionProvider"])


def replay(cell_path: Path, items: list[str], exclude_seen: int = 0):
    """Ground truth: a user's events one by one through the cell (batch of one, plain ORT)."""
    sess = _session(str(cell_path))
    meta = sess.get_modelmeta().custom_metadata_map
    vocab = json.loads(meta["recblr.items"])
    index = {v: i for i, v in enumerate(vocab)}
    S = int(meta["recblr.state_size"])
    state = np.zeros((1, S), np.float32)
    seen: list[int] = []
    ti = ts = None
    for it in items:
        idx = index[it]
        seen.append(idx)
        x = max(exclude_seen, 1)
        ex = np.full((1, x), -1, np.int64)
        if exclude_seen:
            tail = seen[-exclude_seen:]
            ex[0, : len(tail)] = tail
        state, ti, ts = sess.run(
            ["next_state", "top_items", "top_scores"],
            {"item": np.array([idx], np.int64), "state": state, "exclude": ex},
        )
    top = [vocab[i] for i in ti[0]] if ti is not None else []
    return state[0], top, (ts[0] if ts is not None else None)


class Server:
    """`python -m recblr.runtime` (== recblr-serve) on a free loopback port."""

    def __init__(self, cell: Path, state: Path, *args: str, env=None):
        self.cell, self.state, self.args = cell, state, list(args)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.stderr = ""

    def start(self, timeout: float = 30.0) -> Server:
        cmd = [
            sys.executable,
            "-m",
            "recblr.runtime",
            "--onnx",
            str(self.cell),
            "--port",
            "0",
            "--state",
            str(self.state),
            *self.args,
        ]
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                return self
        self.proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))

    def term(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.stderr = self.proc.stderr.read()
        return rc

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stderr.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr and not self.proc.stderr.closed:
            self.proc.stderr.close()


@pytest.fixture
def start_server(tmp_path):
    servers: list[Server] = []

    def start(cell: Path, *args: str, state: Path | None = None, env=None) -> Server:
        s = Server(cell, state or tmp_path / "state.db", *args, env=env).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def read_states(db: Path) -> dict:
    from recblr.runtime.store import SQLiteStore

    st = SQLiteStore(db, exclusive=False)
    try:
        users, cursor = [], 0
        while True:
            cursor, part = st.scan(cursor, 500)
            users += part
            if cursor == 0:
                return st.get_many(users)
    finally:
        st.close()


@pytest.fixture
def states_of():
    return read_states


@pytest.fixture
def replay_fn():
    return replay
