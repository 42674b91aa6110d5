"""The benchmark scripts keep working as the package changes under them.

Every script must answer `--help` with only the package's own dependencies installed: the
optional ones (plots, peer ANN libraries, peer GPU kernels, the serving baseline) are
blocked here, so they must be imported lazily where used. Every `from recblr... import`
in a script, function bodies included, must name something that exists, and data.py's
sizing and feed modes run end to end on a tiny generated log.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
# Packages only the `bench` and `peers` extras install (never the package's own code paths).
OPTIONAL = ("matplotlib", "faiss", "usearch", "starlette", "accelerated_scan", "fla")

# Runs a script as __main__ with the optional packages made unimportable.
RUN_BLOCKED = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by test_benchmarks)")
sys.meta_path.insert(0, Block())
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, {bench!r})
runpy.run_path(script, run_name="__main__")
"""


def run_blocked(script: str, *args: str) -> subprocess.CompletedProcess:
    code = RUN_BLOCKED.format(blocked=OPTIONAL, bench=str(BENCH))
    return subprocess.run([sys.executable, "-c", code, str(BENCH / script), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every script's `--help`, a few at a time (each imports torch)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SCRIPTS, pool.map(lambda s: run_blocked(s, "--help"), SCRIPTS), strict=True))


def test_every_script_is_covered():
    assert {"data.py", "warm_start.py", "serve.py", "scan_peers.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_without_optional_packages(helps, script):
    r = helps[script]
    assert r.returncode == 0, f"{script} --help failed:\n{r.stderr[-2000:]}"
    assert "usage:" in r.stdout


def top_level_names(path: Path) -> set[str]:
    """Names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def imported_names(script: str) -> list[tuple[str, str]]:
    """(module, name) of every `from M import name` in the script, at any depth."""
    tree = ast.parse((BENCH / script).read_text())
    return [(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            and n.level == 0 for a in n.names]


@pytest.mark.parametrize("script", SCRIPTS)
def test_imported_names_exist(script):
    """Catches a removed or renamed API also where a script imports it inside a function
    (which `--help` never runs)."""
    missing = []
    for module, name in imported_names(script):
        sibling = BENCH / f"{module}.py"
        if sibling.exists():
            if name not in top_level_names(sibling):
                missing.append(f"{module}.{name}")
        elif module == "recblr" or module.startswith("recblr."):
            mod = importlib.import_module(module)
            if not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ModuleNotFoundError:
                    missing.append(f"{module}.{name}")
    assert not missing, f"{script} imports names that do not exist: {missing}"


def test_data_sizes_and_feed_modes_run(tmp_path):
    """data.py end to end on 2*10^4 events: the size mode (old, new and bare reads of both
    formats, which must give the same sequences) and the feed mode (real training steps)."""
    r = run_blocked("data.py", "--sizes", "2e4", "--old-max", "2e4", "--dir", str(tmp_path),
                    "--out", str(tmp_path / "sizes"))
    assert r.returncode == 0, r.stderr[-2000:]
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    same = [row for row in sizes["summary"] if "same_sequences" in row]
    assert same == [{"events": 20000, "same_sequences": True,
                     "compared": ["csv/new", "csv/old", "parquet/new"]}], same
    assert not [c for c in sizes["cases"] if "error" in c]

    r = run_blocked("data.py", "--feed", str(tmp_path / "events_2e04.parquet"), "--feed-steps", "1",
                    "--out", str(tmp_path / "feed"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "feed.json").read_text())["feed"]
    assert res["batches"] >= 2 and res["training_pairs"] > 0
    for recipe in ("ce", "sampled", "sampled-sparse"):
        run = res["recipes"][recipe]
        assert run["timed_batches"] >= 1 and run["compute_seconds_per_batch"] > 0
        assert 0 < run["feed_share"] < 1
