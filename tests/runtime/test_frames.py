"""recblr.runtime.frames in one process: the per-process cell cache the engine tests rely on."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from recblr.runtime import frames
from recblr.runtime.errors import CellError

HIST = pd.DataFrame({"user": ["x", "y"], "items": [["1001", "1002", "1003"], ["1004"]]})


def test_one_open_per_cell_file_and_a_replaced_file_is_opened_anew(cells, tmp_path):
    path = tmp_path / "cell.onnx"
    shutil.copy(cells["a"], path)
    first = [frames.score_frame(HIST, path, k=3) for _ in range(3)]
    assert frames.opens()[str(path)] == 1
    assert all(f.equals(first[0]) for f in first)

    # a new model written over the same path (as a deploy would): the next frame uses it
    shutil.copy(cells["b"], tmp_path / "new.onnx")
    os.replace(tmp_path / "new.onnx", path)
    after = frames.score_frame(HIST, path, k=3)
    assert frames.opens()[str(path)] == 2
    assert after.equals(frames.score_frame(HIST, cells["b"], k=3))
    assert not after.equals(first[0])


def test_a_missing_cell_names_the_file(tmp_path):
    with pytest.raises(CellError, match="no such cell file"):
        frames.score_frame(HIST, tmp_path / "missing.onnx")
