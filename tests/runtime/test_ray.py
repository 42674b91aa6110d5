"""Batch scoring inside a real Ray (2 CPUs, Ray Data map_batches) against `recblr score`."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from engine_reference import K, assert_same_answers, reference

pytest.importorskip("ray.data", reason="ray[data] is not installed")

from recblr.runtime import frames  # noqa: E402

pytestmark = [  # Ray Data's own deprecation notices (its config, pandas 3), nothing of ours
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
    pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.reset_index"),
]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the test session: 2 CPUs, no dashboard, worker logs kept out."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_map_batches_matches_recblr_score_and_opens_the_cell_once_per_worker(
    ray_session, cell, tmp_path
):
    import pandas as pd

    hist, want = reference(cell, 2, tmp_path)

    def score_and_report(batch):  # each output batch says which process scored it
        out = frames.score_frame(batch, str(cell), k=K, unknown_items="skip")
        return out.assign(
            pid=os.getpid(), frame=uuid.uuid4().hex, opens=json.dumps(frames.opens())
        )

    pdf = pd.DataFrame({"user": [u for u, _ in hist], "items": [h for _, h in hist]})
    blocks = [pdf.iloc[i : i + 5] for i in range(0, len(pdf), 5)]  # 8 blocks
    ds = ray_session.data.from_pandas(blocks)
    rows = ds.map_batches(score_and_report, batch_format="pandas", batch_size=3).to_pandas()

    assert_same_answers({r.user: (r.items, r.scores) for r in rows.itertuples()}, want)
    assert rows["frame"].nunique() > rows["pid"].nunique(), "expected several batches a process"
    for pid, opens in set(zip(rows["pid"], rows["opens"], strict=True)):
        assert json.loads(opens) == {str(cell): 1}, pid
