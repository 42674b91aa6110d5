"""recblr-serve --stdin, recblr score, refusing bad cells, and running without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

SERVE = "from recblr.runtime.cli import serve_main; serve_main()"
SCORE = "from recblr.runtime.cli import score_main; score_main()"

BLOCKER = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "triton") or name in ("recblr.model", "recblr.train"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


@pytest.fixture
def no_torch_env(tmp_path):
    d = tmp_path / "blocker"
    d.mkdir()
    (d / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(d) + os.pathsep + env.get("PYTHONPATH", "")
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert check.returncode != 0, "the torch blocker is not active"
    return env


def run(code: str, *args, stdin: str | None = None, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_stdin_pipe_without_torch(cell, tmp_path, no_torch_env, replay_fn):
    lines = [
        json.dumps({"user": "a", "item": "1001"}),
        "{oops",
        json.dumps({"user": "a", "item": "nope"}),
        json.dumps({"user": "b", "item": "1005", "seq": 1}),
        json.dumps({"user": "a", "item": "1002"}),
        json.dumps({"user": "b", "item": "1006", "seq": 1}),
        json.dumps({"user": "u" * 300, "item": "1001"}),
    ]
    p = run(
        SERVE,
        "--onnx",
        cell,
        "--stdin",
        "--state",
        tmp_path / "s.db",
        stdin="\n".join(lines) + "\n",
        env=no_torch_env,
    )
    assert p.returncode == 0, p.stderr
    out = [json.loads(x) for x in p.stdout.splitlines()]
    err = [json.loads(x) for x in p.stderr.splitlines()]
    assert [o["user"] for o in out] == ["a", "b", "a", "b"]
    assert out[0]["items"] == replay_fn(cell, ["1001"])[1]
    assert out[2]["items"] == replay_fn(cell, ["1001", "1002"])[1]
    assert out[3]["applied"] is False  # seq 1 again
    assert [e["line"] for e in err] == [2, 3, 7]
    assert "malformed JSON" in err[0]["error"] and "unknown item" in err[1]["error"]
    # the codes /v1/stream gives the same lines (one event parser for both)
    assert [e["code"] for e in err] == ["malformed_json", "unknown_item", "invalid"]


def test_http_server_without_torch(cell, start_server, no_torch_env):
    srv = start_server(cell, "--store", "memory", env=no_torch_env)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.post("/v1/events", json={"user": "1", "item": "1001"}).status_code == 200
    srv.term()
    assert "blocked" not in srv.stderr and "Traceback" not in srv.stderr


def test_runtime_imports_without_torch(no_torch_env):
    code = (
        "import recblr.runtime, recblr.runtime.server, recblr.runtime.cli, recblr.runtime.score;"
        "import sys; assert 'torch' not in sys.modules; print('ok')"
    )
    p = run(code, env=no_torch_env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def _edit_meta(src: Path, dst: Path, **changes) -> Path:
    import onnx

    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}
    for k, v in changes.items():
        key = "recblr." + k
        if v is None:
            props.pop(key, None)
        else:
            props[key] = v
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"format_version": "2"}, "format version '2'"),
        ({"format": None}, "not a recblr cell"),
        ({"items": None}, "lacks recblr.items"),
    ],
)
def test_bad_cell_is_refused_with_one_line(cell, tmp_path, change, needle):
    bad = _edit_meta(cell, tmp_path / "bad.onnx", **change)
    p = run(SERVE, "--onnx", bad, "--port", "0", "--state", tmp_path / "s.db")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("recblr-serve: error:")


def test_missing_cell_file(tmp_path):
    p = run(SERVE, "--onnx", tmp_path / "nope.onnx", "--stdin", stdin="")
    assert p.returncode == 2 and "no such cell file" in p.stderr


def test_engine_cpu_provider_quietly(cell, capfd):
    from recblr.runtime import Engine

    e = Engine(cell, providers="auto")
    assert e.providers[0] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    e.step(["u"], ["1001"])
    out, err = capfd.readouterr()
    assert "CUDA" not in err and "error" not in err.lower()


def test_score_cli_jsonl_and_tsv(cell, tmp_path, replay_fn):
    rng = np.random.default_rng(0)
    items = [str(1000 + i) for i in range(1, 61)]
    hist = {f"u{u}": list(rng.choice(items, size=int(rng.integers(1, 30)))) for u in range(50)}
    src = tmp_path / "h.jsonl"
    src.write_text("".join(json.dumps({"user": u, "items": h}) + "\n" for u, h in hist.items()))
    out = tmp_path / "recs.jsonl"
    p = run(
        SCORE, "--onnx", cell, "--input", src, "--output", out, "--k", "5", "--chunk-size", "16"
    )
    assert p.returncode == 0, p.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["user"] for g in got] == list(hist)
    for g in got:
        assert g["items"] == replay_fn(cell, hist[g["user"]])[1][:5]
    # interactions TSV (user item rating timestamp, headerless, grouped per user, unsorted times)
    tsv = tmp_path / "u.data"
    rows = []
    for u, h in hist.items():
        group = [f"{u}\t{i}\t5\t{1000 + t}" for t, i in enumerate(h)]
        rng.shuffle(group)  # within a user's group any order: sorted by timestamp
        rows += group
    tsv.write_text("\n".join(rows) + "\n")
    out2 = tmp_path / "recs.csv"
    p = run(SCORE, "--onnx", cell, "-i", tsv, "-o", out2, "--k", "3")
    assert p.returncode == 0, p.stderr
    lines = out2.read_text().splitlines()
    assert lines[0] == "user,rank,item,score" and len(lines) == 1 + 3 * len(hist)
    first = [ln.split(",") for ln in lines[1:4]]
    assert [f[2] for f in first] == replay_fn(cell, hist["u0"])[1][:3]
    # not grouped per user: a clear error, exit 2
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\t1001\t5\t1\nb\t1002\t5\t2\na\t1003\t5\t3\n")
    p = run(SCORE, "--onnx", cell, "-i", bad, "-o", tmp_path / "x.jsonl")
    assert p.returncode == 2 and "grouped per user" in p.stderr
    p = run(SCORE, "--onnx", cell, "-i", src, "-o", tmp_path / "y.jsonl", "--k", "99")
    assert p.returncode == 2 and "1..10" in p.stderr


def test_score_bad_input_is_one_line_and_keeps_the_previous_output(cell, tmp_path):
    out = tmp_path / "recs.jsonl"
    out.write_text("previous\n")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"user": "u", "items": ["1001"]}\n{"user": "Jos\xe9"}\n'.encode("latin-1"))
    p = run(SCORE, "--onnx", cell, "-i", bad, "-o", out)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("recblr score: error:") and "not UTF-8" in lines[0]
    assert out.read_text() == "previous\n"  # not truncated by the failed run
    assert sorted(x.name for x in tmp_path.iterdir()) == ["latin1.jsonl", "recs.jsonl"]
    # a CSV whose columns cannot be found: the message names the flags score really has
    csvf = tmp_path / "x.csv"
    csvf.write_text("a;b;c\n1;1001;5\n")
    p = run(SCORE, "--onnx", cell, "-i", csvf, "-o", out, "--columns", "a,b,c")
    assert p.returncode == 2 and "--columns" in p.stderr and "--sep" in p.stderr, p.stderr
    assert "--user-col" not in p.stderr and out.read_text() == "previous\n"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--port", "99999"], "--port 99999: must be in 0..65535"),
        (["--log-level", "nonsense"], "--log-level 'nonsense': use one of critical"),
        (["--gil-switch-us", "-5"], "--gil-switch-us -5: must be in 0..1000000"),
        (["--state", "{tmp}/no/such/dir/s.db"], "--state {tmp}/no/such/dir/s.db: cannot open"),
        # a store URL has one place: --store (--state is the SQLite file)
        (["--state", "redis://127.0.0.1:1/0"], "give a Valkey/Redis store as --store redis://"),
        (["--store", "mysql"], "--store 'mysql': use sqlite, memory or a Valkey/Redis URL"),
    ],
)
def test_serve_startup_errors_are_one_line(cell, tmp_path, args, needle):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--state" not in args:
        args += ["--state", str(tmp_path / "s.db")]
    p = run(SERVE, "--onnx", cell, *args)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("recblr-serve: error:") and needle.format(tmp=tmp_path) in lines[0]


def test_gil_switch_interval_is_set_only_when_asked():
    import sys

    from recblr.runtime.cli import set_gil_switch_interval

    before = sys.getswitchinterval()
    try:
        set_gil_switch_interval(0)
        assert sys.getswitchinterval() == before
        set_gil_switch_interval(250)
        assert abs(sys.getswitchinterval() - 250e-6) < 1e-9
    finally:
        sys.setswitchinterval(before)


def test_serve_bind_failure_closes_the_store(cell, tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        db = tmp_path / "s.db"
        p = run(SERVE, "--onnx", cell, "--port", port, "--state", db)
    finally:
        taken.close()
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], p.stderr
    assert db.exists() and not Path(str(db) + "-wal").exists()  # closed: WAL checkpointed away


def test_stdin_answers_are_utf8_whatever_the_locale(cell, tmp_path):
    """A stdout whose encoding cannot hold a user id (Latin-1 here) gets UTF-8 JSON bytes."""
    env = dict(os.environ, PYTHONIOENCODING="latin-1")
    line = json.dumps({"user": "用户-€", "item": "1001"}, ensure_ascii=False) + "\n"
    p = subprocess.run(
        [sys.executable, "-c", SERVE, "--onnx", str(cell), "--stdin", "--store", "memory"],
        input=line.encode("utf-8"),
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    (answer,) = p.stdout.decode("utf-8").splitlines()
    assert json.loads(answer)["user"] == "用户-€"


def test_stdin_mode_needs_no_http_stack(cell, tmp_path):
    """--stdin imports the engine and the JSON parser, not the HTTP server (#12.5)."""
    code = (
        "import atexit, sys; from recblr.runtime.cli import serve_main;"
        "atexit.register(lambda: print('loaded:', [m for m in sys.modules"
        " if m.split('.')[0] in ('starlette', 'uvicorn') or m == 'recblr.runtime.server'],"
        " file=sys.stderr));"
        "serve_main(sys.argv[1:])"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "--onnx", str(cell), "--store", "memory", "--stdin"],
        input='{"user": "a", "item": "1001"}\n', capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0 and "loaded: []" in p.stderr, p.stderr
    assert json.loads(p.stdout)["user"] == "a"
