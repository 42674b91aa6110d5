"""Training loop: whole-sequence next-item loss, carried state, early stopping on valid NDCG@10.

Every (prefix, next item) pair of the paper's protocol is one position of a training
window, so one forward pass over a window trains all of its prefixes at once (O(n) per
user instead of the O(n^2) of re-encoding each prefix). A window that does not start at the
user's first item starts from the state the earlier items leave (computed in eval mode
without gradient), which is the state serving will have streamed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recblr import distributed
from recblr.checkpoint import save_checkpoint
from recblr.config import ModelConfig, TrainConfig
from recblr.data import SequenceData
from recblr.distributed import (
    World,
    all_sum,
    any_rank,
    from_main,
    gather_to_main,
    shard_batch,
    world_from_env,
)
from recblr.errors import RecblrError
from recblr.evaluate import (
    evaluate,
    evaluate_ranks,
    metrics_from_ranks,
    pad_right,
    stream_minus_window,
)
from recblr.losses import LossFn, NegativeSampler, make_loss
from recblr.model import RecBLR
from recblr.resume import (
    StopSignals,
    capture_rng,
    data_fingerprint,
    numpy_generator,
    numpy_state,
    restore_rng,
    save_resume,
)


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




@dataclass
class EpochTally:
    """How far an epoch has got: batches applied, summed loss and pairs. A resumed epoch carries
    it on, so its mean loss adds up in the same order as without the interruption."""

    steps: int = 0
    loss_sum: float = 0.0
    pairs: int = 0


def train_epoch(
    model: RecBLR,
    opt: Optimizer,
    batches: list[Batch],
    loss_fn: LossFn,
    device: torch.device,
    on_step: Callable[[EpochTally], bool] = lambda tally: False,
    tally: EpochTally | None = None,
    net: torch.nn.Module | None = None,
    world: World = World(),
) -> EpochTally:
    """Apply `batches` from `tally.steps` on (a resumed epoch skips those already applied);
    stops early when `on_step` returns True. Under DDP (`net` wraps `model`), each rank trains
    its shard of every global batch, its loss scaled so the gradient average is the global mean."""
    model.train()
    tally = tally or EpochTally()
    net = net or model
    for batch in batches[tally.steps :]:
        global_pairs = batch.n_pairs
        if world.distributed:
            batch = shard_batch(batch, world)
        items, lengths, targets = batch.to(device)
        state = carried_states(model, batch.context, device)
        h, _ = net(items, state, lengths)
        trained = targets != 0
        loss = loss_fn(h[trained], targets[trained]) if batch.n_pairs else h.sum() * 0.0
        opt.zero_grad(set_to_none=True)
        (loss * (batch.n_pairs * world.size / global_pairs) if world.distributed else loss).backward()
        opt.step()
        tally.loss_sum += float(loss.detach()) * batch.n_pairs
        tally.pairs += batch.n_pairs
        tally.steps += 1
        if on_step(tally):
            break
    return tally


class TrainingStopped(RecblrError):
    """SIGTERM/SIGINT stopped training (after writing a resumable checkpoint, given a folder)."""

    def __init__(self, signal_name: str, checkpoint_dir: str | Path | None):
        self.exit_code = 130 if signal_name == "SIGINT" else 143
        if checkpoint_dir is None:
            how = "nothing to resume from (train with --checkpoint-dir to make a run resumable)"
        else:
            how = f"resume with: recblr train --resume {checkpoint_dir}"
        super().__init__(f"stopped by {signal_name}; {how}")


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


class SparseDenseAdam:
    """SparseAdam for the item table (a sparse gradient over the rows a step touched), Adam for
    every other parameter: one optimiser for the loop and the resumable checkpoint.

    SparseAdam updates only the rows in the gradient, their moments included, so a step costs
    O(rows touched) instead of a pass over the whole table; untouched rows keep their moments
    instead of decaying them as dense Adam does (the one difference from dense training)."""

    def __init__(self, dense_groups: list[dict], table: torch.nn.Parameter, lr: float):
        self.dense = torch.optim.Adam(dense_groups, lr=lr)
        self.sparse = torch.optim.SparseAdam([table], lr=lr)

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"dense", "sparse"}:
            raise RecblrError("--resume: the checkpoint's optimiser is dense Adam; resume without "
                              "--sparse-embeddings (or start a new run)")
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


Optimizer = torch.optim.Adam | SparseDenseAdam


def make_optimizer(model: RecBLR, cfg: TrainConfig) -> Optimizer:
    """Adam over `param_groups`, or with `cfg.sparse_embeddings` SparseAdam for the item table
    (whose lookups are then made sparse) and Adam for the rest."""
    groups = param_groups(model, cfg)
    if not cfg.sparse_embeddings:
        model.sparse_item_gradients(False)
        return torch.optim.Adam(groups, lr=cfg.lr)
    table = model.item_emb.weight
    groups = [{**g, "params": [p for p in g["params"] if p is not table]} for g in groups]
    model.sparse_item_gradients(True)
    return SparseDenseAdam(groups, table, cfg.lr)


def train(
    data: SequenceData,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: str | Path | None = None,
    console: Console | None = None,
    checkpoint_dir: str | Path | None = None,
    save_every_min: float | None = None,
    resume: dict | None = None,
    run: dict | None = None,
    init: RecBLR | None = None,
) -> TrainResult:
    """Train with early stopping; saves the best-validation checkpoint to `out` as it goes.

    With `checkpoint_dir`, a resumable checkpoint (recblr.resume) is written at every epoch end,
    every `save_every_min` minutes within an epoch (0: after every step) and on SIGTERM/SIGINT,
    which then stop the run (`TrainingStopped`). `resume`, a state read back by
    `recblr.resume.load_resume`, continues such a run exactly where it stopped; `run` is kept in
    the checkpoint for the CLI (settings, data location). Started by torchrun or `--nproc`, every
    rank runs this function; only rank 0 evaluates, logs and writes files. `init`: start from
    these weights (a warm start, `recblr.warm_start`) instead of fresh ones.
    """
    if model_cfg.n_items != data.n_items:
        raise ValueError("model_cfg.n_items must equal the data's catalog size")
    console = console or Console(stderr=True)
    world = world_from_env()
    if cfg.sparse_embeddings and world.distributed:
        raise RecblrError("sparse_embeddings: not with several processes (DDP reduces dense gradients "
                          "only); train with one process or drop --sparse-embeddings")
    device = distributed.init(world, resolve_device(cfg.device))
    if not world.main:
        console.quiet = True
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + world.rank)
    model = (init if init is not None else RecBLR(model_cfg)).to(device)
    if world.rank > 0:
        torch.manual_seed(cfg.seed + world.rank)  # each rank its own dropout masks
    net = model
    if world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = make_optimizer(model, cfg)
    train_seqs = data.train_sequences()
    sampler = None
    if cfg.loss == "sampled":
        sampler = NegativeSampler.build(cfg.sampler, data.n_items, train_seqs, device=device)
    loss_fn = make_loss(cfg.loss, model.item_emb, gen, cfg.negatives, sampler)
    n_users = data.n_users
    resumable = checkpoint_dir is not None or resume is not None
    fingerprint = data_fingerprint(data.item_ids, data.user_ids, data.items, data.offsets) if resumable else ""

    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    t_train, steps_done, first_epoch, tally, epoch_rng, resumed_seconds = 0.0, 0, 1, None, numpy_state(rng), 0.0
    if resume is not None:
        if resume["data_fingerprint"] != fingerprint:
            raise RecblrError("--resume: the prepared data differs from the checkpoint's (another file, "
                              "filter or content); pass the data it was trained on")
        n = len(resume["ranks"])
        if n != world.size:
            raise RecblrError(f"--resume: the checkpoint was written by {n} processes, this run has {world.size}; "
                              f"resume with --nproc {n}")
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        restore_rng(resume["ranks"][world.rank]["rng"], gen)
        tally = EpochTally(**resume["ranks"][world.rank]["tally"])
        first_epoch, epoch_rng, resumed_seconds = resume["epoch"], resume["epoch_rng"], resume["epoch_seconds"]
        best, best_epoch, bad, best_state = resume["best"], resume["best_epoch"], resume["bad"], resume["best_state"]
        history, t_train, steps_done = resume["history"], resume["train_seconds"], resume["steps_done"]

    def save(epoch: int, tally: EpochTally, epoch_seconds: float) -> None:
        """Each rank's generators and running loss go to rank 0, which writes (a collective)."""
        ranks = gather_to_main({"rng": capture_rng(gen), "tally": vars(tally).copy()}, world)
        if world.main:
            save_resume(checkpoint_dir, {
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "ranks": ranks, "epoch_rng": epoch_rng,
                "epoch": epoch, "epoch_seconds": epoch_seconds,
                "steps_done": steps_done, "best": best, "best_epoch": best_epoch, "bad": bad,
                "best_state": best_state, "history": history, "train_seconds": t_train,
                "model_config": model_cfg.to_dict(), "train_config": cfg.to_dict(),
                "data_fingerprint": fingerprint, "run": dict(run or {}),
            }, steps_done)

    save_every_s = None if save_every_min is None else 60.0 * save_every_min
    last_save = time.monotonic()
    stopped = False
    with _progress(console) as progress, StopSignals() as stop:
        for epoch in range(first_epoch, cfg.epochs + 1):
            if bad >= cfg.patience:  # a resumed run that had stopped early (and --patience not raised)
                break
            t0 = time.perf_counter() - resumed_seconds
            rng = numpy_generator(epoch_rng)
            batches = epoch_batches(train_seqs, cfg, rng)
            tally = tally or EpochTally()
            task = progress.add_task(f"epoch {epoch}", total=len(batches), completed=tally.steps)

            def on_step(tally: EpochTally, epoch=epoch, task=task, t0=t0, n=len(batches)) -> bool:
                nonlocal steps_done, last_save
                steps_done += 1
                progress.advance(task)
                if tally.steps == n:
                    return False  # the epoch's end saves and checks for a stop
                due = (checkpoint_dir is not None and save_every_s is not None and world.main
                       and time.monotonic() - last_save >= save_every_s)
                stop_now, due = any_rank([stop.requested, due], world, device)
                if checkpoint_dir is not None and (stop_now or due):
                    save(epoch, tally, time.perf_counter() - t0)
                    last_save = time.monotonic()
                return stop_now

            tally = train_epoch(model, opt, batches, loss_fn, device, on_step, tally, net, world)
            if tally.steps < len(batches):
                stopped = True
                break
            progress.remove_task(task)
            seconds = time.perf_counter() - t0
            resumed_seconds = 0.0
            t_train += seconds
            loss_sum, pairs = all_sum([tally.loss_sum, tally.pairs], world, device)
            mean_loss, pairs = loss_sum / max(1, pairs), int(pairs)
            tally = None

            score, valid = float("nan"), {}
            if world.main:
                vtask = progress.add_task("validating", total=n_users)
                valid = evaluate(model, data, "valid", (cfg.select_mode,), cfg.max_len, cfg.eval_batch_size,
                                 progress=lambda n, vtask=vtask: progress.advance(vtask, n))
                progress.remove_task(vtask)
                score = valid[cfg.select_mode]["ndcg@10"]
            score = from_main(score, world, device)
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
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if out is not None and world.main:
                    partial_metrics = {"best_epoch": epoch, "epochs": epoch, "valid": valid, "complete": False}
                    save_checkpoint(out, model, data.item_ids, data.user_ids, cfg.to_dict(), partial_metrics,
                                    data.spec)
            else:
                bad += 1
            epoch_rng = numpy_state(rng)
            if checkpoint_dir is not None:
                save(epoch + 1, EpochTally(), 0.0)
                last_save = time.monotonic()
            if bad >= cfg.patience:
                console.print(f"early stop: no improvement for {cfg.patience} epochs", highlight=False)
                break
            if any_rank([stop.requested], world, device)[0] and epoch < cfg.epochs:
                stopped = True
                break
    model.sparse_item_gradients(False)  # the trained model is dense again for whoever uses it
    distributed.shutdown(world)  # the last collective is behind us: rank 0 alone evaluates and saves
    if stopped:
        raise TrainingStopped(stop.signal or "a signal to another rank", checkpoint_dir)
    if not world.main:
        return TrainResult(model.cpu(), {}, history)

    if best_state is None:
        raise RecblrError("no epoch gave a finite validation NDCG@10 (the loss diverged?); lower lr and retrain")
    model.load_state_dict(best_state)
    model.eval()
    with _progress(console) as progress:
        task = progress.add_task("evaluating", total=4 * n_users)
        step = lambda n: progress.advance(task, n)  # noqa: E731
        valid = evaluate(model, data, "valid", max_len=cfg.max_len, batch_size=cfg.eval_batch_size, progress=step)
        test_ranks = evaluate_ranks(model, data, "test", max_len=cfg.max_len, batch_size=cfg.eval_batch_size,
                                    progress=step)
    test = {mode: metrics_from_ranks(r) for mode, r in test_ranks.items()}
    metrics = {
        "best_epoch": best_epoch,
        "epochs": len(history),
        "seconds_per_epoch": t_train / max(1, len(history)),
        "train_seconds": t_train,
        "valid": valid,
        "test": test,
        "stream_minus_window_test": stream_minus_window(test_ranks),
        "history": history,
        "complete": True,
    }
    if out is not None:
        save_checkpoint(out, model, data.item_ids, data.user_ids, cfg.to_dict(), metrics, data.spec)
    return TrainResult(model.cpu(), metrics, history)
