"""The runtime's one JSON codec: compact UTF-8, lines for text streams, NaN as null."""

import math

import pytest

from recblr.runtime import jsonio


def test_round_trip_compact_utf8():
    obj = {"user": "ü-42", "items": ["1193", "661"], "scores": [1.5, -0.25], "seq": 7}
    raw = jsonio.dumps(obj)
    assert raw == '{"user":"ü-42","items":["1193","661"],"scores":[1.5,-0.25],"seq":7}'.encode()
    assert jsonio.loads(raw) == obj
    line = jsonio.dumps_line(obj)
    assert line.endswith("\n") and line.count("\n") == 1 and jsonio.loads(line) == obj


def test_float_scores_survive_exactly():
    scores = [0.1, 1 / 3, 12.345678901234567, 1e-7, -2.5e20]
    assert jsonio.loads(jsonio.dumps(scores)) == scores


def test_non_finite_is_null():
    assert jsonio.loads(jsonio.dumps([math.nan, math.inf, 1.0])) == [None, None, 1.0]


@pytest.mark.parametrize("bad", [b"{", b"", b"{'user': 1}", b"[1,]"])
def test_malformed_raises_value_error(bad):
    with pytest.raises(ValueError):
        jsonio.loads(bad)
