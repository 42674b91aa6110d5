"""Batch scoring inside a real Spark (local[2], mapInPandas) against `recblr score`."""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
from engine_reference import K, assert_same_answers, local_spark, reference

pytest.importorskip("pyspark", reason="the spark extra is not installed")
pytest.importorskip("pyarrow", reason="Spark's mapInPandas needs pyarrow")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java 17+ (no java on PATH, no JAVA_HOME)", allow_module_level=True)

from pyspark import SparkFiles  # noqa: E402

from recblr.runtime import frames  # noqa: E402

pytestmark = [  # pyspark 4.3 on pandas 3: its own deprecation notices, nothing of ours
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]



@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark for the test session: 2 Python workers, small Arrow batches."""
    session = local_spark(
        "recblr-test",
        "512m",
        **{
            "spark.sql.shuffle.partitions": "2",
            # several Arrow batches per partition: the cell must still be opened once per worker
            "spark.sql.execution.arrow.maxRecordsPerBatch": "4",
        },
    )
    yield session
    session.stop()


def test_map_in_pandas_matches_recblr_score_and_opens_the_cell_once_per_worker(
    spark, cell, tmp_path
):
    hist, want = reference(cell, 0, tmp_path)

    # ship the cell with addFile under a name of its own; workers open their local copy
    shipped = tmp_path / "ship" / "model-cell.onnx"
    shipped.parent.mkdir()
    shutil.copy(cell, shipped)
    spark.sparkContext.addFile(str(shipped))

    score = functools.partial(
        frames.score_frames, cell=frames.SparkFile("model-cell.onnx"), k=K, unknown_items="skip"
    )

    def score_and_report(batches):  # each output frame says which process scored it
        for out in score(batches):
            yield out.assign(
                pid=os.getpid(), frame=uuid.uuid4().hex, opens=json.dumps(frames.opens())
            )

    rdd = spark.sparkContext.parallelize(hist, 8)  # 8 tasks of 5 users, 2 frames each
    df = spark.createDataFrame(rdd, "user string, items array<string>")
    schema = frames.spark_schema() + ", pid long, frame string, opens string"
    rows = df.mapInPandas(score_and_report, schema).toPandas()

    got = {r.user: (list(r.items), list(r.scores)) for r in rows.itertuples()}
    assert_same_answers(got, want)

    # after every frame, its process had opened one cell once: the copy addFile made
    assert rows["frame"].nunique() > rows["pid"].nunique(), "expected several frames a process"
    root = SparkFiles.getRootDirectory()
    for pid, opens in set(zip(rows["pid"], rows["opens"], strict=True)):
        opened = json.loads(opens)
        assert list(opened.values()) == [1], (pid, opened)
        (path,) = opened
        assert Path(path).name == "model-cell.onnx" and Path(path).is_relative_to(root), path


def test_unknown_item_fails_the_job_with_the_cli_message(spark, cell, tmp_path):
    df = spark.createDataFrame([("u1", ["1001", "nope"])], "user string, items array<string>")
    score = functools.partial(frames.score_frames, cell=str(cell), k=K)
    with pytest.raises(Exception, match=r"user 'u1': unknown item 'nope'"):
        df.mapInPandas(score, frames.spark_schema()).collect()
