"""Shared bits of the benchmark scripts: provenance of a result file, a median timer."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _git_state() -> tuple[str, bool]:
    """HEAD and whether tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return commit, dirty


# Read when a script starts (it imports this module first), not when it writes its result:
# the code that ran is the code at the start, whatever is committed during a long run.
_START_COMMIT, _START_DIRTY = _git_state()


def provenance() -> dict:
    """Command, commit (at the run's start) and machine, so a number can be traced to what produced it."""
    commit, dirty = _START_COMMIT, _START_DIRTY
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": commit,
        "git_dirty": dirty,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_for(path: str, data, data_name: str):
    """A checkpoint to evaluate on `data`; stops with one line if it has another item vocabulary."""
    from recblr.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if list(ck.item_ids) != list(data.item_ids):
        raise SystemExit(f"{path}: trained on another item vocabulary than {data_name}")
    ck.model.eval()
    return ck


def median_ms(fn, min_reps: int = 5, budget_s: float = 1.0, warmup: int = 2, max_reps: int = 1000) -> float:
    """Median milliseconds of fn() after `warmup` calls: at least `min_reps` calls, more while
    the time budget lasts (up to `max_reps`)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
