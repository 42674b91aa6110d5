from pathlib import Path

import numpy as np
import pytest
from datafiles import write_inter

from recblr.data import build_sequences, kcore_mask, load_dataset, load_interactions
from recblr.errors import RecblrError


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


def test_kcore_iterates_until_stable():
    # item 2 has 2 users; dropping it makes user 1 too short, which then drops item 1 below k.
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    items = np.array([0, 1, 2, 1, 2, 0, 0, 1, 0])
    keep = kcore_mask(users, items, 3)
    assert keep.sum() == 0 or (np.bincount(users[keep]).max() >= 3)
    keep2 = kcore_mask(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 2)
    assert keep2.all()


def test_loaders_each_format(tmp_path: Path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978300761\n2::10::4::978300762\n")
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t3\t881250950\n")
    (tmp_path / "x.csv").write_text('user,movieId,rating,timestamp\n1,"10",5,7\n2,20,3,8\n')
    (tmp_path / "x.tsv").write_text("uid\tiid\tts\n1\t10\t7\n")
    write_inter(tmp_path / "x.inter", [("1", "10", 5.0), ("2", "20", 6.0)])
    r = load_interactions(tmp_path / "ratings.dat")
    assert r.users == ["1", "1", "2"] and r.items == ["10", "20", "10"] and r.timestamps[2] == 978300762
    r = load_interactions(tmp_path / "u.data")
    assert r.items == ["10", "20"] and r.timestamps[1] == 881250950
    r = load_interactions(tmp_path / "x.csv")
    assert r.users == ["1", "2"] and r.items == ["10", "20"]
    r = load_interactions(tmp_path / "x.tsv", user_col="uid", item_col="iid", time_col="ts")
    assert r.users == ["1"] and r.items == ["10"] and r.timestamps[0] == 7
    r = load_interactions(tmp_path / "x.inter")
    assert r.users == ["1", "2"] and list(r.timestamps) == [5.0, 6.0]


@pytest.mark.parametrize(
    "name, content, fmt, message",
    [
        ("missing.inter", None, "auto", "no such file"),
        ("bad.inter", "user_id:token\tmovie:token\ttimestamp:float\n1\t2\t3\n", "auto", "no item column"),
        ("bad.csv", "user,item,timestamp\n1,2,yesterday\n", "auto", "is not a number"),
        ("short.dat", "1::2\n", "auto", "expected at least 4 fields"),
        ("empty.inter", "", "auto", "empty file"),
        ("x.bin", "1\t2\t3\n", "auto", "cannot tell the format"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, name, content, fmt, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecblrError, match=message) as e:
        load_interactions(path, fmt)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_csv_quoted_newline_and_bad_quoting(tmp_path: Path):
    (tmp_path / "q.csv").write_text('user,item,timestamp\n1,"multi\nline",5\n2,b,6\n')
    r = load_interactions(tmp_path / "q.csv")
    assert r.items == ["multi\nline", "b"] and list(r.timestamps) == [5.0, 6.0]
    (tmp_path / "bad.csv").write_text('user,item,timestamp\n1,2,x\n')
    with pytest.raises(RecblrError, match=r"bad.csv:2: timestamp 'x'"):
        load_interactions(tmp_path / "bad.csv")


def test_empty_after_filtering(tmp_path: Path):
    path = write_inter(tmp_path / "few.inter", [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)])
    with pytest.raises(RecblrError, match="no interactions left after the 5-core filter"):
        load_dataset(str(path))


def test_build_sequences_ids_are_strings(tmp_path: Path):
    from recblr.data import Interactions

    inter = Interactions(["7"] * 5 + ["8"] * 5 + ["9"] * 5, ["1", "2", "3", "4", "5"] * 3, np.arange(15.0), "mem")
    d = build_sequences(inter, min_count=3)
    assert all(isinstance(i, str) for i in d.item_ids) and d.user_ids == ["7", "8", "9"]
    assert d.n_items == 5 and d.n_interactions == 15


def test_ml100k_real(ml100k: Path):
    d = load_dataset(str(ml100k))
    assert (len(d.user_ids), d.n_items, d.n_interactions) == (943, 1349, 99287)
