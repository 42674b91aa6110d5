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


def _split_reference(data: bytes, limit: int) -> list:
    """What the splitter must find, from splitting the whole input at once."""
    out, lines = [], data.split(b"\n")
    for i, line in enumerate(lines, 1):
        if len(line) > limit:
            out.append((i, "too_large"))
        elif line.strip():
            out.append((i, line))
    return out


def test_line_splitter_matches_whole_input_split_in_any_chunking():
    import random

    rng = random.Random(0)
    parts = [b"\n", b"ab", b"x" * 7, b"  ", b"\n\n", b'{"u":1}']
    for _ in range(1000):
        data = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 40)))
        s, out, i = jsonio.LineSplitter(8), [], 0
        while i < len(data):
            j = i + rng.randint(1, 9)
            out += s.feed(data[i:j])
            i = j
        out += s.finish()
        got = [(n, x if isinstance(x, bytes) else x.code) for n, x in out]
        assert got == _split_reference(data, 8), data


def test_line_splitter_drops_a_partial_line_unless_finished():
    s = jsonio.LineSplitter(100)
    assert s.feed(b'{"a":1}\n{"b"') == [(1, b'{"a":1}')]
    assert s.lineno == 1  # the partial line is held, not counted: finish() only if complete
    assert s.finish() == [(2, b'{"b"')]
