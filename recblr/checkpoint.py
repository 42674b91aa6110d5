"""model.pt: weights, config, vocabularies and metrics, loadable with weights_only=True.

Only tensors, strings, numbers, lists and dicts go in, so loading never runs pickled code
from a file someone hands you.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from recblr.config import ModelConfig
from recblr.errors import RecblrError
from recblr.model import RecBLR

CHECKPOINT_FORMAT = "recblr-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    model: RecBLR  # eval mode, on CPU
    config: ModelConfig
    item_ids: list[str]  # item_ids[0] is padding
    user_ids: list[str]
    metrics: dict
    train_config: dict
    data: dict  # recblr.data spec: how to load the training data again


def save_atomically(
    path: Path, payload: dict, tmp_prefix: str, cannot_write: Callable[[OSError], RecblrError]
) -> None:
    """torch.save `payload` to `path` through a temp file beside it (named `tmp_prefix`...),
    fsynced, renamed into place, then the folder fsynced: a crash leaves the old file or the new
    one, never half of one. A folder that cannot be made or written raises `cannot_write(e)`."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, suffix=".tmp", dir=directory)
    except OSError as e:
        raise cannot_write(e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(
    path: str | Path,
    model: RecBLR,
    item_ids: list[str],
    user_ids: list[str],
    train_config: dict,
    metrics: dict,
    data: dict,
) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "item_ids": list(item_ids),
        "user_ids": list(user_ids),
        "train_config": dict(train_config),
        "metrics": metrics,
        "data": data,
    }
    save_atomically(
        path,
        payload,
        f".{path.name}.",
        lambda e: RecblrError(f"{path}: cannot write the checkpoint there ({e.strerror}); choose another --out"),
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a model.pt; any problem is one RecblrError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RecblrError(f"{path}: no such checkpoint file; pass the model.pt written by `recblr train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or corrupt files
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise RecblrError(
            f"{path}: not a readable recblr checkpoint ({reason}); pass a model.pt written by `recblr train`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RecblrError(f"{path}: not a recblr checkpoint (no '{CHECKPOINT_FORMAT}' marker); pass a model.pt written by `recblr train`")
    version = payload.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise RecblrError(
            f"{path}: checkpoint format version {version!r}, this recblr reads version {CHECKPOINT_VERSION}; "
            "retrain with this version or use the recblr that wrote it"
        )
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        model = RecBLR(config)
        model.load_state_dict(payload["state_dict"])
        item_ids = [str(i) for i in payload["item_ids"]]
        if len(item_ids) != config.n_items + 1:
            raise ValueError(f"{len(item_ids)} item ids for {config.n_items} items + padding")
        ckpt = Checkpoint(
            model=model.eval(),
            config=config,
            item_ids=item_ids,
            user_ids=[str(u) for u in payload["user_ids"]],
            metrics=payload.get("metrics", {}),
            train_config=payload.get("train_config", {}),
            data=payload.get("data", {}),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RecblrError(f"{path}: damaged recblr checkpoint ({msg}); retrain or restore the file") from None
    return ckpt
