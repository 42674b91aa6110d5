"""Training loop: whole-sequence next-item loss, carried state, early stopping on valid NDCG@10.

Every (prefix, next item) pair of the paper's protocol is one position of a training
window, so one forward pass over a window trains all of its prefixes at once (O(n) per
user instead of the O(n^2) of re-encoding each prefix). A window that does not start at the
user's first item starts from the state the earlier items leave (computed in eval mode
without gradient), which is the state serving will have streamed.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recblr.checkpoint import save_checkpoint
from recblr.config import ModelConfig, TrainConfig
from recblr.data import SequenceData
from recblr.errors import RecblrError
from recblr.evaluate import evaluate, pad_right
from recblr.model import RecBLR


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecblrError(f"device {device!r}: CUDA is not available here; use cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise RecblrError(f"device {device!r} is not a device; use auto, cpu or cuda") from None


def sequence_windows(
    train_seqs: list[np.ndarray], max_len: int, rng: np.random.Generator | None = None
) -> list[tuple[int, int, int]]:
    """(user, start, length) windows covering every (prefix, next item) pair exactly once.

    With `rng`, a sequence longer than one window gets a first window of random length
    (1..max_len), so the cuts where gradients stop move from epoch to epoch instead of always
    falling at the same positions.
    """
    windows = []
    for u, s in enumerate(train_seqs):
        n_pairs = len(s) - 1
        first = max_len
        if rng is not None and n_pairs > max_len:
            first = int(rng.integers(1, max_len + 1))
        if n_pairs > 0:
            windows.append((u, 0, min(first, n_pairs)))
        for start in range(first, n_pairs, max_len):
            windows.append((u, start, min(max_len, n_pairs - start)))
    return windows


def length_batches(
    lengths: np.ndarray, budget: int, rng: np.random.Generator, bucket: int = 64
) -> list[np.ndarray]:
    """Shuffled batches of about `budget` pairs, grouped by similar length to save padding."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    chunk = max(1, bucket * max(1, budget // max(1, int(lengths.mean()))))
    for c in range(0, len(order), chunk):
        part = order[c : c + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        cur: list[int] = []
        total = 0
        for i in part:
            if cur and total + lengths[i] > budget:
                batches.append(np.array(cur))
                cur, total = [], 0
            cur.append(int(i))
            total += int(lengths[i])
        if cur:
            batches.append(np.array(cur))
    rng.shuffle(batches)
    return batches


@dataclass
class Batch:
    """One optimiser step's data, on the host. Row r continues the history `context[r]` (empty:
    from the empty state) with `items[r, :lengths[r]]`; `targets[r, t]` is the item to predict
    after position t, 0 where no loss is taken (padding, or a prefix-mode row's earlier items)."""

    items: np.ndarray  # (B, T) int64, right-padded with 0
    lengths: np.ndarray  # (B,) int64
    targets: np.ndarray  # (B, T) int64
    context: list[np.ndarray]

    @property
    def n_pairs(self) -> int:
        return int(np.count_nonzero(self.targets))

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(items, lengths, targets) as tensors on `device`."""
        return tuple(torch.from_numpy(a).to(device) for a in (self.items, self.lengths, self.targets))


def _padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, s in enumerate(rows):
        out[r, : len(s)] = s
    return out


def window_batches(train_seqs: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator) -> list[Batch]:
    """Sequence mode: every window trains all of its (prefix, next item) pairs at once."""
    windows = sequence_windows(train_seqs, cfg.window, rng if cfg.window_offsets == "random" else None)
    lengths = np.array([w[2] for w in windows])
    batches = []
    for picked in length_batches(lengths, cfg.batch_size, rng):
        ws = [windows[i] for i in picked]
        lens = np.array([n for _, _, n in ws], dtype=np.int64)
        width = max(1, int(lens.max()))
        batches.append(Batch(
            items=_padded([train_seqs[u][s : s + n] for u, s, n in ws], width),
            lengths=lens,
            targets=_padded([train_seqs[u][s + 1 : s + n + 1] for u, s, n in ws], width),
            context=[train_seqs[u][:s] for u, s, _ in ws],
        ))
    return batches


def prefix_examples(train_seqs: list[np.ndarray]) -> np.ndarray:
    """(user, end) pairs: predict seq[end] from seq[:end], as the paper's reference code."""
    return np.array([(u, e) for u, s in enumerate(train_seqs) for e in range(1, len(s))], dtype=np.int64)


def prefix_batches(train_seqs: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator) -> list[Batch]:
    """Prefix mode (the paper's reference code): one pair per row, its last `max_len` items
    encoded from the empty state, the loss at the last position only."""
    examples = prefix_examples(train_seqs)
    order = rng.permutation(len(examples))
    batches = []
    for c in range(0, len(order), cfg.batch_size):
        picked = examples[order[c : c + cfg.batch_size]]
        rows = [train_seqs[u][max(0, e - cfg.max_len) : e] for u, e in picked]
        lens = np.array([len(r) for r in rows], dtype=np.int64)
        targets = np.zeros((len(rows), int(lens.max())), dtype=np.int64)
        targets[np.arange(len(rows)), lens - 1] = [train_seqs[u][e] for u, e in picked]
        batches.append(Batch(_padded(rows, targets.shape[1]), lens, targets, [np.zeros(0, dtype=np.int64)] * len(rows)))
    return batches


def epoch_batches(train_seqs: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator) -> list[Batch]:
    """One epoch's batches in training order (the only use of `rng`)."""
    if cfg.example_mode == "prefix":
        return prefix_batches(train_seqs, cfg, rng)
    return window_batches(train_seqs, cfg, rng)


@torch.no_grad()
def carried_states(model: RecBLR, context: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Each row's state after its `context` items (zeros for an empty context), computed in eval
    mode: the state serving will have streamed."""
    state = model.initial_state(len(context), device)
    rows = [i for i, c in enumerate(context) if len(c) > 0]
    if rows:
        was_training = model.training
        model.eval()
        items, lengths = pad_right([context[i] for i in rows], device)
        _, s = model(items, lengths=lengths)
        state[rows] = s
        model.train(was_training)
    return state


def next_item_loss(
    model: RecBLR, h: torch.Tensor, targets: torch.Tensor, loss: str, rng: torch.Generator | None
) -> torch.Tensor:
    """Full-catalog cross-entropy, or BPR against one uniformly sampled negative."""
    if loss == "ce":
        return F.cross_entropy(model.item_scores(h), targets)
    emb = model.item_emb.weight
    neg = torch.randint(1, emb.shape[0], targets.shape, device=targets.device, generator=rng)
    diff = (h * emb[targets]).sum(-1) - (h * emb[neg]).sum(-1)
    return -F.logsigmoid(diff).mean()


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def train_epoch(
    model: RecBLR,
    opt: torch.optim.Optimizer,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    device: torch.device,
    on_step: Callable[[], None] = lambda: None,
) -> tuple[float, int]:
    """One pass over `batches`; returns the mean loss per pair and the number of pairs."""
    model.train()
    total_loss, total_pairs = 0.0, 0
    for batch in batches:
        items, lengths, targets = batch.to(device)
        state = carried_states(model, batch.context, device)
        h, _ = model(items, state, lengths)
        trained = targets != 0
        loss = loss_fn(h[trained], targets[trained])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += float(loss.detach()) * batch.n_pairs
        total_pairs += batch.n_pairs
        on_step()
    return total_loss / max(1, total_pairs), total_pairs


@dataclass
class TrainResult:
    model: RecBLR
    metrics: dict
    history: list[dict] = field(default_factory=list)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )


def param_groups(model: RecBLR, cfg: TrainConfig) -> list[dict]:
    """Lambda (the decay floors) may learn at its own rate: at lr 1e-3 it moves by about one
    unit per thousand Adam steps, while a=0.999 to a=0.99 is 2.3 units."""
    lam = list(model.lambda_parameters().values())
    rest = [p for p in model.parameters() if all(p is not q for q in lam)]
    return [{"params": rest}, {"params": lam, "lr": cfg.lr * cfg.lambda_lr_scale}]


def train(
    data: SequenceData,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: str | Path | None = None,
    console: Console | None = None,
    init: RecBLR | None = None,
) -> TrainResult:
    """Train with early stopping; saves the best-validation checkpoint to `out` as it goes.
    `init`: start from these weights (a warm start, `recblr.warm_start`) instead of fresh ones."""
    if model_cfg.n_items != data.n_items:
        raise ValueError("model_cfg.n_items must equal the data's catalog size")
    console = console or Console(stderr=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = (init if init is not None else RecBLR(model_cfg)).to(device)
    opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr)
    loss_fn = partial(next_item_loss, model, loss=cfg.loss, rng=gen)
    train_seqs = data.train_sequences()
    n_users = len(data.sequences)

    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    t_train = 0.0
    with _progress(console) as progress:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            batches = epoch_batches(train_seqs, cfg, rng)
            task = progress.add_task(f"epoch {epoch}", total=len(batches))
            mean_loss, pairs = train_epoch(model, opt, batches, loss_fn, device,
                                           on_step=lambda task=task: progress.advance(task))
            progress.remove_task(task)
            seconds = time.perf_counter() - t0
            t_train += seconds

            vtask = progress.add_task("validating", total=n_users)
            valid = evaluate(model, data, "valid", (cfg.select_mode,), cfg.max_len, cfg.eval_batch_size,
                             progress=lambda n, vtask=vtask: progress.advance(vtask, n))
            progress.remove_task(vtask)
            score = valid[cfg.select_mode]["ndcg@10"]
            row = {"epoch": epoch, "loss": mean_loss, "valid_ndcg@10": score, "seconds": seconds, "pairs": pairs}
            history.append(row)
            improved = score > best
            console.print(
                f"epoch {epoch:3d} | loss {mean_loss:.4f} | valid NDCG@10 {score:.4f} ({cfg.select_mode})"
                f" | {seconds:.1f}s{' *' if improved else ''}",
                highlight=False,
            )
            if improved:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if out is not None:
                    partial_metrics = {"best_epoch": epoch, "epochs": epoch, "valid": valid, "complete": False}
                    save_checkpoint(out, model, data.item_ids, data.user_ids, cfg.to_dict(), partial_metrics,
                                    data.spec)
            else:
                bad += 1
                if bad >= cfg.patience:
                    console.print(f"early stop: no improvement for {cfg.patience} epochs", highlight=False)
                    break

    if best_state is None:
        raise RecblrError("no epoch gave a finite validation NDCG@10 (the loss diverged?); lower lr and retrain")
    model.load_state_dict(best_state)
    model.eval()
    with _progress(console) as progress:
        task = progress.add_task("evaluating", total=4 * n_users)
        step = lambda n: progress.advance(task, n)  # noqa: E731
        valid = evaluate(model, data, "valid", max_len=cfg.max_len, batch_size=cfg.eval_batch_size, progress=step)
        test = evaluate(model, data, "test", max_len=cfg.max_len, batch_size=cfg.eval_batch_size, progress=step)
    metrics = {
        "best_epoch": best_epoch,
        "epochs": len(history),
        "seconds_per_epoch": t_train / max(1, len(history)),
        "train_seconds": t_train,
        "valid": valid,
        "test": test,
        "history": history,
        "complete": True,
    }
    if out is not None:
        save_checkpoint(out, model, data.item_ids, data.user_ids, cfg.to_dict(), metrics, data.spec)
    return TrainResult(model.cpu(), metrics, history)
