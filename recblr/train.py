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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recblr.checkpoint import save_checkpoint
from recblr.config import ModelConfig, TrainConfig
from recblr.data import SequenceData
from recblr.errors import RecblrError
from recblr.evaluate import evaluate, pad_right
from recblr.losses import LOSSES, NegativeSampler, make_loss
from recblr.model import RecBLR


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecblrError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise RecblrError(f"--device {device!r} is not a device; use auto, cpu or cuda") from None


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


@torch.no_grad()
def carried_states(
    model: RecBLR, seqs: list[np.ndarray], starts: list[int], device: torch.device
) -> torch.Tensor:
    """State after the first `start` items of each sequence (zeros where start == 0)."""
    state = model.initial_state(len(seqs), device)
    rows = [i for i, s in enumerate(starts) if s > 0]
    if rows:
        was_training = model.training
        model.eval()
        items, lengths = pad_right([seqs[i][: starts[i]] for i in rows], device)
        _, s = model(items, lengths=lengths)
        state[rows] = s
        model.train(was_training)
    return state


def _sequence_batches(
    model: RecBLR, train_seqs: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator, device
) -> Iterator[Callable[[], tuple[torch.Tensor, torch.Tensor, int]]]:
    window = cfg.max_len if cfg.train_window is None else cfg.train_window
    windows = sequence_windows(train_seqs, window, rng if cfg.window_offsets == "random" else None)
    lengths = np.array([w[2] for w in windows])
    for batch in length_batches(lengths, cfg.batch_size, rng):

        def run(batch=batch):
            ws = [windows[i] for i in batch]
            state = carried_states(model, [train_seqs[u] for u, _, _ in ws], [s for _, s, _ in ws], device)
            items, lens = pad_right([train_seqs[u][s : s + n] for u, s, n in ws], device)
            tgts, _ = pad_right([train_seqs[u][s + 1 : s + n + 1] for u, s, n in ws], device)
            h, _ = model(items, state, lens)
            mask = torch.arange(items.shape[1], device=device).view(1, -1) < lens.view(-1, 1)
            return h[mask], tgts[mask], int(mask.sum())

        yield run


def prefix_examples(train_seqs: list[np.ndarray]) -> np.ndarray:
    """(user, end) pairs: predict seq[end] from seq[:end], as the paper's reference code."""
    return np.array([(u, e) for u, s in enumerate(train_seqs) for e in range(1, len(s))], dtype=np.int64)


def _prefix_batches(
    model: RecBLR, train_seqs: list[np.ndarray], cfg: TrainConfig, rng: np.random.Generator, device
) -> Iterator[Callable[[], tuple[torch.Tensor, torch.Tensor, int]]]:
    examples = prefix_examples(train_seqs)
    order = rng.permutation(len(examples))
    for c in range(0, len(order), cfg.batch_size):
        batch = examples[order[c : c + cfg.batch_size]]

        def run(batch=batch):
            seqs = [train_seqs[u][max(0, e - cfg.max_len) : e] for u, e in batch]
            items, lens = pad_right(seqs, device)
            tgts = torch.as_tensor(np.array([train_seqs[u][e] for u, e in batch]), device=device)
            return model.last_hidden(items, lens), tgts, len(batch)

        yield run


def epoch_batches(model, train_seqs, cfg, rng, device):
    if cfg.example_mode == "sequence":
        return list(_sequence_batches(model, train_seqs, cfg, rng, device))
    if cfg.example_mode == "prefix":
        return list(_prefix_batches(model, train_seqs, cfg, rng, device))
    raise RecblrError(f"--example-mode {cfg.example_mode!r}: use sequence or prefix")


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
) -> TrainResult:
    """Train with early stopping; saves the best-validation checkpoint to `out` as it goes."""
    if cfg.loss not in LOSSES:
        raise RecblrError(f"--loss {cfg.loss!r}: use one of {', '.join(LOSSES)}")
    if cfg.select_mode not in ("stream", "window"):
        raise RecblrError(f"select mode {cfg.select_mode!r}: use stream or window")
    if cfg.window_offsets not in ("fixed", "random"):
        raise RecblrError(f"--window-offsets {cfg.window_offsets!r}: use fixed or random")
    if not cfg.lambda_lr_scale > 0:
        raise RecblrError(f"--lambda-lr-scale {cfg.lambda_lr_scale}: must be > 0")
    if cfg.epochs < 1:
        raise RecblrError(f"--epochs {cfg.epochs}: train for at least 1 epoch")
    if model_cfg.n_items != data.n_items:
        raise ValueError("model_cfg.n_items must equal the data's catalog size")
    console = console or Console(stderr=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = RecBLR(model_cfg).to(device)
    opt = torch.optim.Adam(param_groups(model, cfg), lr=cfg.lr)
    train_seqs = data.train_sequences()
    sampler = None
    if cfg.loss == "sampled":
        sampler = NegativeSampler.build(cfg.sampler, data.n_items, train_seqs, device=device)
    loss_fn = make_loss(cfg.loss, model.item_emb, gen, cfg.negatives, sampler)
    n_users = len(data.sequences)

    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    t_train = 0.0
    with _progress(console) as progress:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            batches = epoch_batches(model, train_seqs, cfg, rng, device)
            task = progress.add_task(f"epoch {epoch}", total=len(batches))
            total_loss, total_pairs = 0.0, 0
            for run in batches:
                h, tgts, n = run()
                loss = loss_fn(h, tgts)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total_loss += float(loss.detach()) * n
                total_pairs += n
                progress.advance(task)
            progress.remove_task(task)
            seconds = time.perf_counter() - t0
            t_train += seconds
            vtask = progress.add_task("validating", total=n_users)
            valid = evaluate(model, data, "valid", (cfg.select_mode,), cfg.max_len, cfg.eval_batch_size,
                             progress=lambda n, vtask=vtask: progress.advance(vtask, n))
            progress.remove_task(vtask)
            score = valid[cfg.select_mode]["ndcg@10"]
            row = {"epoch": epoch, "loss": total_loss / max(1, total_pairs), "valid_ndcg@10": score,
                   "seconds": seconds, "pairs": total_pairs}
            history.append(row)
            improved = score > best
            console.print(
                f"epoch {epoch:3d} | loss {row['loss']:.4f} | valid NDCG@10 {score:.4f} ({cfg.select_mode})"
                f" | {seconds:.1f}s{' *' if improved else ''}",
                highlight=False,
            )
            if improved:
                best, best_epoch, bad = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                if out is not None:
                    partial = {"best_epoch": epoch, "epochs": epoch, "valid": valid, "complete": False}
                    save_checkpoint(out, model, data.item_ids, data.user_ids, cfg.to_dict(), partial, data.spec)
            else:
                bad += 1
                if bad >= cfg.patience:
                    console.print(f"early stop: no improvement for {cfg.patience} epochs", highlight=False)
                    break

    if best_state is None:
        raise RecblrError(
            "no epoch gave a finite validation NDCG@10 (the loss diverged?); lower --lr and retrain"
        )
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
