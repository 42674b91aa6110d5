"""Batch scoring inside a real Dask cluster (2 worker processes, map_partitions) against
`recblr score`."""

from __future__ import annotations

import pytest
from engine_reference import K, assert_same_answers, reference

pytest.importorskip("dask.dataframe", reason="the dask extra is not installed")
pytest.importorskip("distributed", reason="the dask extra is not installed")

from recblr.runtime import frames  # noqa: E402


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


def test_map_partitions_matches_recblr_score_and_opens_the_cell_once_per_worker(
    dask_client, cell, tmp_path
):
    import dask.dataframe as dd
    import pandas as pd
    import pyarrow as pa

    hist, want = reference(cell, 1, tmp_path, "--exclude-seen", "3")

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
    assert_same_answers({r.user: (r.items, r.scores) for r in out.itertuples()}, want)

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
