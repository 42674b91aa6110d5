from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafiles import write_inter

from recblr.data import build_sequences, kcore_rows, load_dataset
from recblr.errors import RecblrError
from recblr.readers import Interactions, read_interactions


def test_split_ties_kcore_and_exactly_five(tmp_path: Path):
    rows = []
    # u1: exactly 5 items on 5 items that each get 5+ users -> kept; two equal timestamps.
    for item, ts in [("a", 1), ("b", 3), ("c", 3), ("d", 4), ("e", 9)]:
        rows.append(("u1", item, ts))
    # u2..u5 also rate a..e (in another time order) so every item has >= 5 users.
    for u in ("u2", "u3", "u4", "u5"):
        for k, item in enumerate(["e", "d", "c", "b", "a"]):
            rows.append((u, item, 100 + k))
    # u6 has 5 items but one ('z') is rare: after 'z' drops, u6 has 4 -> u6 drops (2nd iteration)
    for k, item in enumerate(["a", "b", "c", "d", "z"]):
        rows.append(("u6", item, 200 + k))
    path = write_inter(tmp_path / "t.inter", rows)
    d = load_dataset(str(path))
    assert d.user_ids == ["u1", "u2", "u3", "u4", "u5"]
    ext = lambda seq: [d.item_ids[i] for i in seq]  # noqa: E731
    # stable sort: b and c share timestamp 3 and keep file order
    assert ext(d.sequences[0]) == ["a", "b", "c", "d", "e"]
    assert ext(d.sequences[1]) == ["e", "d", "c", "b", "a"]
    hist, tgt = d.split_histories("test")
    assert ext(hist[0]) == ["a", "b", "c", "d"] and d.item_ids[tgt[0]] == "e"
    hist, tgt = d.split_histories("valid")
    assert ext(hist[0]) == ["a", "b", "c"] and d.item_ids[tgt[0]] == "d"
    assert ext(d.train_sequences()[0]) == ["a", "b", "c"]
    assert "z" not in d.item_ids and d.item_ids[0] == "[PAD]"


def test_csr_accessors_agree_with_the_lists(small_inter: Path):
    d = load_dataset(str(small_inter))
    assert d.offsets[0] == 0 and d.offsets[-1] == len(d.items) == d.n_interactions
    assert d.n_users == len(d.user_ids) == len(d.sequences)
    assert list(d.lengths) == [len(s) for s in d.sequences]
    for split, views in [("train", d.train_sequences()), ("valid", d.split_histories("valid")[0]),
                         ("test", d.split_histories("test")[0])]:
        starts, ends = d.bounds(split)
        assert all(np.array_equal(d.items[s:e], v) for s, e, v in zip(starts, ends, views, strict=True))
    assert np.array_equal(d.targets("test"), [s[-1] for s in d.sequences])
    starts, lengths = d.offsets[[3, 0, 7]] + [2, 0, 1], np.array([4, 1, 0])
    w = d.windows(starts, lengths)
    assert w.shape == (3, 4) and w.dtype == np.int64
    assert list(w[0]) == list(d.sequences[3][2:6]) and list(w[1]) == [d.sequences[0][0], 0, 0, 0] and not w[2].any()
    assert np.array_equal(d.targets("valid"), [s[-2] for s in d.sequences])


def test_kcore_iterates_until_stable():
    # item 2 has 2 users; dropping it makes users 0 and 1 too short, which then drops item 1.
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    items = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 0, 1, 0])
    rows = kcore_rows(users, items, 3)
    # round 1 drops item 2 (2 rows); users 0, 1 fall to 2 rows and drop; item 1 then has 2.
    assert rows.tolist() == [6, 8, 9, 11] or rows.size == 0
    u, i = users[rows], items[rows]
    assert rows.size == 0 or (np.bincount(u)[np.unique(u)].min() >= 3 and np.bincount(i)[np.unique(i)].min() >= 3)
    assert kcore_rows(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2).tolist() == [0, 1, 2, 3]


def test_loaders_each_format(tmp_path: Path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978300761\n2::10::4::978300762\n")
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t3\t881250950\n")
    (tmp_path / "x.csv").write_text('user,movieId,rating,timestamp\n1,"10",5,7\n2,20,3,8\n')
    (tmp_path / "x.tsv").write_text("uid\tiid\tts\n1\t10\t7\n")
    write_inter(tmp_path / "x.inter", [("1", "10", 5.0), ("2", "20", 6.0)])
    r = read_interactions(tmp_path / "ratings.dat")
    assert r.users() == ["1", "1", "2"] and r.items() == ["10", "20", "10"] and r.timestamps[2] == 978300762
    r = read_interactions(tmp_path / "u.data")
    assert r.items() == ["10", "20"] and r.timestamps[1] == 881250950
    r = read_interactions(tmp_path / "x.csv")
    assert r.users() == ["1", "2"] and r.items() == ["10", "20"]
    r = read_interactions(tmp_path / "x.tsv", user_col="uid", item_col="iid", time_col="ts")
    assert r.users() == ["1"] and r.items() == ["10"] and r.timestamps[0] == 7
    r = read_interactions(tmp_path / "x.inter")
    assert r.users() == ["1", "2"] and list(r.timestamps) == [5.0, 6.0]


def test_parquet_file_and_directory_with_typed_columns(tmp_path: Path):
    n = 60
    users = np.repeat(np.arange(100, 112), 5)  # integer ids
    items = np.array([f"sku-{k % 6}" for k in range(n)])
    ts = pa.array(np.arange(n)[::-1] * 1_000_000_000, pa.timestamp("ns"))
    table = pa.table({"customer": users, "sku": items, "ts": ts, "price": np.ones(n)})
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=17)
    (tmp_path / "dir").mkdir()
    pq.write_table(table.slice(0, 25), tmp_path / "dir" / "part-0.parquet")
    pq.write_table(table.slice(25), tmp_path / "dir" / "part-1.parquet")
    (tmp_path / "dir" / "_SUCCESS").write_text("")
    cols = dict(user_col="customer", item_col="sku", time_col="ts")
    a = load_dataset(str(tmp_path / "one.parquet"), **cols)
    b = load_dataset(str(tmp_path / "dir"), **cols)
    assert a.user_ids == b.user_ids == [str(u) for u in range(100, 112)]
    assert np.array_equal(a.items, b.items) and np.array_equal(a.offsets, b.offsets)
    # times run backwards, so each user's sequence is its rows in reverse
    assert [a.item_ids[i] for i in a.sequences[0]] == [f"sku-{k}" for k in (4, 3, 2, 1, 0)]


def test_iso_timestamps_in_csv(tmp_path: Path):
    (tmp_path / "t.csv").write_text("user,item,time\nu,b,2024-01-02 10:00:00\nu,a,2024-01-01T09:00:00\n")
    r = read_interactions(tmp_path / "t.csv")
    assert r.timestamps[1] < r.timestamps[0]


@pytest.mark.parametrize(
    "name, content, fmt, message",
    [
        ("missing.inter", None, "auto", "no such file"),
        ("bad.inter", "user_id:token\tmovie:token\ttimestamp:float\n1\t2\t3\n", "auto", "no item column"),
        ("bad.csv", "user,item,timestamp\n1,2,yesterday\n1,3,5\n1,4,x\n", "auto",
         r"timestamp column 'timestamp' is not a number in 2 of 3 rows \(first: 'yesterday'\)"),
        ("nan.csv", "user,item,timestamp\n1,2,NaN\n1,3,5\n", "auto", r"'timestamp' is NaN in 1 of 2 rows"),
        ("null.csv", "user,item,timestamp\n1,,4\n1,3,5\n2,,6\n", "auto", r"column 'item' is empty or null in 2 of 3"),
        ("short.dat", "1::2\n", "auto", "malformed file"),
        ("empty.inter", "", "auto", "empty file"),
        ("x.bin", "1\t2\t3\n", "auto", "cannot tell the format"),
        ("x.parquet", "not parquet", "auto", "cannot read as Parquet"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, name, content, fmt, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecblrError, match=message) as e:
        read_interactions(path, fmt)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_parquet_nulls_types_and_missing_column(tmp_path: Path):
    base = {"user_id": ["a", "b", None, None], "item_id": ["x", "y", "z", "w"], "timestamp": [1, 2, 3, 4]}
    pq.write_table(pa.table(base), tmp_path / "nulls.parquet")
    with pytest.raises(RecblrError, match=r"column 'user_id' is empty or null in 2 of 4 rows"):
        read_interactions(tmp_path / "nulls.parquet")
    pq.write_table(pa.table({**base, "user_id": [1.5, 2.0, 3.0, 4.0]}), tmp_path / "float.parquet")
    with pytest.raises(RecblrError, match=r"column 'user_id' has type double; ids must be strings or integers"):
        read_interactions(tmp_path / "float.parquet")
    with pytest.raises(RecblrError, match=r"no timestamp column .*name it with --time-col"):
        read_interactions(tmp_path / "nulls.parquet", time_col="when")


def test_csv_quoted_newline_and_spaces(tmp_path: Path):
    (tmp_path / "q.csv").write_text('user,item,timestamp\n1,"multi\nline",5\n2, b ,6\n3,b,7\n')
    r = read_interactions(tmp_path / "q.csv")
    assert r.items() == ["multi\nline", "b", "b"] and list(r.timestamps) == [5.0, 6.0, 7.0]
    assert len(r.item_vocab) == 2  # " b " and "b" are one item, as ids are stripped


def test_empty_after_filtering(tmp_path: Path):
    path = write_inter(tmp_path / "few.inter", [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)])
    with pytest.raises(RecblrError, match="no interactions left after the 5-core filter"):
        load_dataset(str(path))


def test_build_sequences_ids_are_strings():
    inter = Interactions.from_lists(["7"] * 5 + ["8"] * 5 + ["9"] * 5, ["1", "2", "3", "4", "5"] * 3, np.arange(15.0))
    d = build_sequences(inter, min_count=3)
    assert all(isinstance(i, str) for i in d.item_ids) and d.user_ids == ["7", "8", "9"]
    assert d.n_items == 5 and d.n_interactions == 15


def test_ml100k_real(ml100k: Path):
    d = load_dataset(str(ml100k))
    assert (len(d.user_ids), d.n_items, d.n_interactions) == (943, 1349, 99287)


def test_cli_data_info_on_parquet_with_named_columns(tmp_path: Path):
    import subprocess
    import sys

    n = 40
    pq.write_table(pa.table({"customer_id": np.repeat(np.arange(8), 5), "sku": [f"s{k % 5}" for k in range(n)],
                             "ts": np.arange(n)}), tmp_path / "events.parquet")
    args = [sys.executable, "-m", "recblr", "data", "info", str(tmp_path / "events.parquet"),
            "--user-col", "customer_id", "--item-col", "sku", "--time-col", "ts"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "8 │     5 │           40" in r.stdout
    assert r.stderr == ""  # no progress bars when stderr is not a terminal
    r = subprocess.run(args[:-1] + ["when"], capture_output=True, text=True)
    assert r.returncode == 2 and "no timestamp column" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("time_sorted", [True, False])
def test_user_time_order_is_lexsort(time_sorted: bool):
    from recblr.data import user_time_order

    rng = np.random.default_rng(3)
    user = rng.integers(0, 50, 5000)
    time = rng.integers(0, 30, 5000).astype(np.float64)  # many ties
    if time_sorted:
        time.sort()
    assert np.array_equal(user_time_order(user, time), np.lexsort((time, user)))


def test_dataset_from_spec_finds_the_same_parquet_directory(tmp_path: Path):
    from recblr.data import dataset_from_spec

    n = 30
    table = pa.table({"user_id": np.repeat(np.arange(6), 5), "item_id": [f"s{k % 5}" for k in range(n)],
                      "timestamp": np.arange(n)})
    (tmp_path / "d").mkdir()
    pq.write_table(table, tmp_path / "d" / "a.parquet")
    d = load_dataset(str(tmp_path / "d"))
    again = dataset_from_spec(d.spec)
    assert again is not None and again.item_ids == d.item_ids and np.array_equal(again.items, d.items)
    pq.write_table(table.slice(0, 5), tmp_path / "d" / "b.parquet")  # the directory changed
    assert dataset_from_spec(d.spec) is None
