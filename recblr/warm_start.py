"""Warm start: continue training an earlier checkpoint on new data whose catalog has grown.

Two promises keep a served user's history meaningful across the update:
- the item id mapping is extended, never renumbered: every item of the old checkpoint keeps
  its internal id (also when the new data no longer holds it), and items new to this data
  are appended after them in the data's own first-appearance order;
- the old weights are kept: the network's parameters are copied, the embedding rows of the
  old items are the old rows, and only the new items' rows start fresh.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from recblr.checkpoint import Checkpoint
from recblr.config import ModelConfig
from recblr.data import SequenceData
from recblr.errors import RecblrError
from recblr.model import RecBLR

# The sizes that make the network's shape (dropout and ln_eps may change between runs).
ARCHITECTURE = ("dim", "n_layers", "expand", "conv_width")


def extend_vocabulary(data: SequenceData, old_item_ids: list[str]) -> SequenceData:
    """`data` renumbered onto `old_item_ids` extended by the items only `data` has."""
    old_index = {x: i for i, x in enumerate(old_item_ids) if i > 0}
    new_ids = [x for x in data.item_ids[1:] if x not in old_index]
    item_ids = list(old_item_ids) + new_ids
    index = {x: i for i, x in enumerate(item_ids) if i > 0}
    remap = np.array([0] + [index[x] for x in data.item_ids[1:]], dtype=np.int64)
    return SequenceData(item_ids, data.user_ids, remap[data.items], data.offsets, data.spec)


def check_architecture(ckpt: Checkpoint, cfg: ModelConfig, source: str, flags: dict[str, str]) -> None:
    """Refuse, in one line, an architecture that differs from the checkpoint's. `flags` names
    the CLI option of each field, for the message."""
    diff = [f for f in ARCHITECTURE if getattr(cfg, f) != getattr(ckpt.config, f)]
    if diff:
        have = ", ".join(f"{flags.get(f, f)} {getattr(ckpt.config, f)}" for f in diff)
        asked = ", ".join(f"{flags.get(f, f)} {getattr(cfg, f)}" for f in diff)
        raise RecblrError(
            f"--init-from {source}: the checkpoint was trained with {have}, not {asked}; "
            "leave these options out (they default to the checkpoint's) or train from scratch"
        )


def warm_model(ckpt: Checkpoint, cfg: ModelConfig, seed: int) -> RecBLR:
    """A model of `cfg` (the extended catalog) holding the checkpoint's weights: fresh rows
    (the model's own initialisation, seeded) only for the items after the old ones."""
    check_architecture(ckpt, cfg, "checkpoint", {})
    old_rows = ckpt.config.n_items + 1
    if cfg.n_items + 1 < old_rows:
        raise RecblrError("the new catalog must extend the checkpoint's (see extend_vocabulary)")
    torch.manual_seed(seed)
    model = RecBLR(cfg)
    new_sd = model.state_dict()
    with torch.no_grad():
        for name, old in ckpt.model.state_dict().items():
            dst = new_sd[name]
            if dst.shape == old.shape:
                dst.copy_(old)
            elif dst.shape[1:] == old.shape[1:] and old.shape[0] == old_rows:
                dst[:old_rows].copy_(old)  # a per-item table: old rows kept, new rows fresh
            else:
                raise RecblrError(f"checkpoint tensor {name} {tuple(old.shape)} does not fit {tuple(dst.shape)}")
    model.load_state_dict(new_sd)
    return model


def warm_config(ckpt: Checkpoint, data: SequenceData, **overrides) -> ModelConfig:
    """The checkpoint's config for the extended catalog, with `overrides` (e.g. dropout)."""
    return replace(ckpt.config, n_items=data.n_items, **overrides)


CLI_FLAGS = {"dim": "--dim", "n_layers": "--layers", "expand": "--expand", "conv_width": "--conv-width"}


def prepare(
    init_from, data: SequenceData, asked: ModelConfig, explicit: set[str], seed: int
) -> tuple[SequenceData, ModelConfig, RecBLR]:
    """What `recblr train --init-from` trains: the data on the extended mapping, the
    checkpoint's architecture (an option given explicitly must agree with it), and the
    warm model. `explicit`: the config fields the user set on the command line."""
    from recblr.checkpoint import load_checkpoint

    ckpt = load_checkpoint(init_from)
    given = replace(ckpt.config, **{f: getattr(asked, f) for f in ARCHITECTURE if f in explicit})
    check_architecture(ckpt, given, str(init_from), CLI_FLAGS)
    data = extend_vocabulary(data, ckpt.item_ids)
    cfg = warm_config(ckpt, data, dropout=asked.dropout)
    return data, cfg, warm_model(ckpt, cfg, seed)
