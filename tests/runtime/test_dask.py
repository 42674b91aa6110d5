"""Batch scoring inside a real Dask cluster (2 worker processes, map_partitions) against
`recblr score`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.dataframe", reason="the dask extra is not installed")
pytest.importorskip("distributed", reason="the dask extra is not installed")

from recblr.runtime import frames  # noqa: E402

SCORE = "from recblr.runtime.cli import score_main; score_main()"
K = 5


@pytest.fixture(scope="session")
def dask_client():
    """One LocalCluster for the test session: 2 worker processes, one thread each."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def histories(seed: int, n_users: int = 40) -> list[tuple[str, list[str]]]:
    """Random histories over the test cell's items (1001..1060), lengths 0..30, with ids the
    cell does not know mixed in (both sides skip them)."""
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


def test_map_partitions_matches_recblr_score_and_opens_the_cell_once_per_worker(
    dask_client, cell, tmp_path
):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    hist = histories(seed=1)
    want = recblr_score(
        cell, hist, tmp_path, "--k", str(K), "--unknown-items", "skip", "--exclude-seen", "3"
    )

    # the cell reaches the workers as a path every worker can read (here: the same disk)
    # a list<string> column: Dask keeps it as is (a column of Python lists it would cast to str)
    items = pd.Series([h for _, h in hist], dtype=pd.ArrowDtype(pa.list_(pa.string())))
    pdf = pd.DataFrame({"user": [u for u, _ in hist], "items": items})
    ddf = dd.from_pandas(pdf, npartitions=8)
    assert ddf.npartitions == 8
    scored = ddf.map_partitions(
        frames.score_frame,
        str(cell),
        k=K,
        unknown_items="skip",
        exclude_seen=3,
        meta=frames.score_meta(),
    )
    out = scored.compute()

    assert list(out["user"]) == list(pdf["user"])  # rows in input order
    assert sorted(out["user"]) == sorted(want)
    for r in out.itertuples():
        assert list(r.items) == want[r.user]["items"], r.user
        np.testing.assert_allclose(r.scores, want[r.user]["scores"], rtol=1e-5, atol=1e-6)

    # 8 partitions on 2 worker processes, and each process opened the cell once
    per_worker = dask_client.run(frames.opens)
    assert len(per_worker) == 2
    opened = [n.get(str(cell), 0) for n in per_worker.values()]
    assert opened == [1, 1], per_worker


def test_a_column_of_lists_cast_to_strings_is_one_clear_error(dask_client, cell):
    import dask.dataframe as dd
    import pandas as pd

    # plain Python lists: Dask's default string conversion turns them into "['1001', ...]"
    pdf = pd.DataFrame({"user": ["u1", "u2"], "items": [["1001", "1002"], ["1003"]]})
    ddf = dd.from_pandas(pdf, npartitions=1)
    scored = ddf.map_partitions(frames.score_frame, str(cell), meta=frames.score_meta())
    with pytest.raises(Exception, match=r"user 'u1': column 'items' holds a string, not a list"):
        scored.compute()
