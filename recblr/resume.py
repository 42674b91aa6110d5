"""Resumable training state: written atomically into a folder, the last two kept, read back exactly.

A resumable checkpoint holds everything the training loop needs to continue as if it had never
stopped: model and optimizer state, every random generator (torch, numpy, Python, and the
loss's own torch generator), the epoch and the number of batches of it already applied, the
early-stopping record, the run's settings and a fingerprint of the prepared data. Content is
tensors, strings, numbers, lists and dicts only, so `torch.load(weights_only=True)` reads it.

torch's zip reader does not check CRCs, so a flipped byte would load silently: each file carries
a SHA-256 over its own content (`digest`), checked on load. A kill during a write leaves only a
temp file, never a half-written checkpoint under a checkpoint name.
"""

from __future__ import annotations

import hashlib
import random
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recblr.checkpoint import save_atomically
from recblr.errors import RecblrError

RESUME_FORMAT = "recblr-resume"
RESUME_VERSION = 1
KEEP = 2
_NAME = re.compile(r"^resume-(\d{10})\.pt$")

# Settings a resumed run may change: they steer how long it runs and where it writes, never
# what one step computes. Everything else in the saved settings must match.
MAY_CHANGE = frozenset({"epochs", "patience", "save_every_min", "out", "metrics_json", "checkpoint_dir",
                        "nproc"})  # the number of processes is checked against the checkpoint's own


def data_fingerprint(item_ids: list[str], user_ids: list[str], items: np.ndarray, offsets: np.ndarray) -> str:
    """SHA-256 of the prepared data (vocabularies and every user's item sequence, as the CSR
    arrays), so a resumed run refuses a file that was edited, re-filtered or re-ordered since
    the checkpoint."""
    h = hashlib.sha256()
    for ids in (item_ids, user_ids):
        h.update(len(ids).to_bytes(8, "little"))
        for s in ids:
            b = s.encode()
            h.update(len(b).to_bytes(8, "little") + b)
    for a in (offsets, items):
        a = np.ascontiguousarray(a, dtype=np.int64)
        h.update(len(a).to_bytes(8, "little") + a.tobytes())
    return h.hexdigest()


def capture_rng(generator: torch.Generator | None = None) -> dict:
    """Every random stream training draws from, as weights_only-loadable values."""
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()),
        "numpy_global": _plain(np.random.get_state(legacy=False)),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict, generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy_global"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        generator.set_state(state["generator"])


def numpy_state(rng: np.random.Generator) -> dict:
    return _plain(rng.bit_generator.state)


def numpy_generator(state: dict) -> np.random.Generator:
    """A numpy Generator continuing exactly from a `numpy_state`."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def _plain(x: Any) -> Any:
    """numpy scalars and arrays inside RNG states -> ints and lists (weights_only-loadable)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def content_digest(payload: Any) -> str:
    """SHA-256 over a payload's structure and values, tensors by dtype, shape and bytes."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k in sorted(x, key=str):
                h.update(f"K{k!r}".encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"V{type(x).__name__}:{x!r}".encode())

    walk(payload)
    return h.hexdigest()


def checkpoint_files(directory: Path) -> list[Path]:
    """The resumable checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save_resume(directory: str | Path, state: dict, counter: int) -> Path:
    """Write `state` as checkpoint number `counter` (steps done so far): temp file, fsync, rename,
    fsync of the folder; then drop all but the newest KEEP files. Returns the new file."""
    directory = Path(directory)
    payload = {"format": RESUME_FORMAT, "format_version": RESUME_VERSION, "state": state}
    payload["digest"] = content_digest(payload["state"])
    path = directory / f"resume-{counter:010d}.pt"
    save_atomically(
        path,
        payload,
        ".resume-",
        lambda e: RecblrError(
            f"--checkpoint-dir {directory}: cannot write there ({e.strerror}); choose another folder"
        ),
    )
    for old in checkpoint_files(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    for stale in directory.glob(".resume-*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    return path


def read_resume(path: Path) -> dict:
    """One checkpoint's state; any problem is a RecblrError saying what is wrong with the file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RecblrError(f"{path}: unreadable ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
        raise RecblrError(f"{path}: not a recblr resumable checkpoint")
    if payload.get("format_version") != RESUME_VERSION:
        raise RecblrError(
            f"{path}: resumable checkpoint version {payload.get('format_version')!r}, "
            f"this recblr reads version {RESUME_VERSION}"
        )
    if content_digest(payload.get("state")) != payload.get("digest"):
        raise RecblrError(f"{path}: content does not match its digest (damaged on disk)")
    return payload["state"]


def load_resume(directory: str | Path, say: Callable[[str], None] = print) -> tuple[dict, Path]:
    """The newest valid checkpoint in `directory`; a damaged newer one is skipped and `say` tells so."""
    directory = Path(directory)
    files = checkpoint_files(directory)
    if not files:
        raise RecblrError(
            f"--resume {directory}: no resumable checkpoint there (resume-*.pt); "
            "pass the --checkpoint-dir of a run"
        )
    problems = []
    for path in reversed(files):
        try:
            state = read_resume(path)
        except RecblrError as e:
            problems.append(str(e))
            continue
        for problem in problems:
            say(f"{problem}; resuming from the previous checkpoint {path.name}")
        return state, path
    raise RecblrError(f"--resume {directory}: no valid checkpoint there ({'; '.join(problems)})")


def settings_differences(saved: dict, given: dict, flags: dict[str, str] | None = None) -> list[str]:
    """'--flag X (checkpoint: Y)' for each given setting that differs and may not change."""
    flags = flags or {}
    out = []
    for name, value in given.items():
        if name in MAY_CHANGE or name not in saved:
            continue
        if saved[name] != value:
            flag = flags.get(name, "--" + name.replace("_", "-"))
            out.append(f"{flag} {value!r} (checkpoint: {saved[name]!r})")
    return out


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop after the current step (it then writes a resumable
    checkpoint); a second SIGINT stops at once, for a user who does not want to wait.

    Installed only in the main thread (signal handlers can live nowhere else); old handlers
    come back on exit.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
