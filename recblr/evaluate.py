"""Full-ranking evaluation: HR, NDCG and MRR at 10 and 20 over the whole catalog.

Ranking rule: the padding id is never ranked (score -inf); items already in the history are
not masked (RecBole's behaviour for sequential models). Ties: rank = 1 + the number of
items scoring strictly higher than the target, so a tie is resolved in the target's favour
(with float32 scores of a trained model exact ties are rare; the rule is fixed so results
are reproducible across backends).

Scores are never held for the whole catalog at once: `chunked_ranks` walks the item table in
chunks sized so that one (users x chunk) block stays under a fixed number of floats, so the
peak memory of a ranking is independent of the catalog size beyond the embeddings themselves.

Two modes: `window` feeds the last max_len history items from the zero state (the paper's
protocol); `stream` feeds the whole history through the recurrence, as serving does.
"""

from __future__ import annotations

import numpy as np
import torch

from recblr.data import SequenceData
from recblr.model import RecBLR

KS = (10, 20)
MODES = ("window", "stream")
SCORE_BLOCK = 1 << 22  # floats in one (users x items) block of scores: 16 MB


def ranks_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among the row's scores (ties favour the target)."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores > target_scores).sum(dim=1) + 1


def _score_block(h: torch.Tensor, emb: torch.Tensor, start: int) -> torch.Tensor:
    """Scores of emb rows start.. for h; the padding row 0 gets -inf."""
    block = h @ emb.t()
    if start == 0:
        block[:, 0] = float("-inf")
    return block


def chunked_ranks(
    h: torch.Tensor, emb: torch.Tensor, targets: torch.Tensor, block: int = SCORE_BLOCK
) -> torch.Tensor:
    """`ranks_of_targets(h @ emb.T with padding at -inf, targets)` without the full matrix.

    A target's own score is read from the same chunk-shaped product that scores its chunk,
    and its own column is never counted, so ties follow the rule of `ranks_of_targets`.
    """
    n_rows = emb.shape[0]
    chunk = max(1, block // max(1, h.shape[0]))
    targets = targets.view(-1)
    own = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
    higher = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
    rows = torch.arange(h.shape[0], device=h.device)
    for start in range(0, n_rows, chunk):
        inside = (targets >= start) & (targets < start + chunk)
        if inside.any():
            r = rows[inside]
            sub = _score_block(h[r], emb[start : start + chunk], start)
            own[r] = sub.gather(1, (targets[r] - start).view(-1, 1)).squeeze(1)
    for start in range(0, n_rows, chunk):
        scores = _score_block(h, emb[start : start + chunk], start)
        inside = (targets >= start) & (targets < start + chunk)
        r = rows[inside]
        scores[r, targets[r] - start] = float("-inf")
        higher += (scores > own.view(-1, 1)).sum(dim=1)
    return higher + 1


def ndcg_per_user(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each user's NDCG@k (one target: 1/log2(rank+1) inside the top k), for paired comparisons."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(ndcg_per_user(ranks, k).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
    return out


def pad_right(seqs: list[np.ndarray], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) item tensor and lengths; padding never enters the state."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    T = max(1, int(lengths.max()))
    out = np.zeros((len(seqs), T), dtype=np.int64)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = s
    return torch.from_numpy(out).to(device), lengths.to(device)


def _batches(lengths: list[int], max_users: int, max_tokens: int):
    """Users sorted by length, cut into batches bounded by users and padded tokens."""
    order = np.argsort(lengths, kind="stable")
    batch: list[int] = []
    for idx in order:
        if batch and (len(batch) >= max_users or (len(batch) + 1) * lengths[idx] > max_tokens):
            yield batch
            batch = []
        batch.append(int(idx))
    if batch:
        yield batch


@torch.no_grad()
def history_ranks(
    model: RecBLR,
    histories: list[np.ndarray],
    targets: np.ndarray,
    mode: str,
    max_len: int,
    batch_size: int = 4096,
    max_tokens: int = 1 << 16,
    progress=None,
    block: int = SCORE_BLOCK,
) -> np.ndarray:
    """Rank of each target given its history, in `window` or `stream` mode (chunked over items)."""
    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; use one of {MODES}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if mode == "window":
        histories = [h[-max_len:] for h in histories]
    ranks = np.zeros(len(histories), dtype=np.int64)
    for batch in _batches([len(h) for h in histories], batch_size, max_tokens):
        items, lengths = pad_right([histories[i] for i in batch], device)
        h = model.last_hidden(items, lengths)
        tgt = torch.as_tensor(targets[batch], device=device)
        ranks[batch] = chunked_ranks(h, model.item_emb.weight, tgt, block).cpu().numpy()
        if progress is not None:
            progress(len(batch))
    model.train(was_training)
    return ranks


def evaluate_ranks(
    model: RecBLR,
    data: SequenceData,
    split: str = "test",
    modes: tuple[str, ...] = MODES,
    max_len: int = 200,
    batch_size: int = 4096,
    progress=None,
) -> dict[str, np.ndarray]:
    """{mode: each user's target rank} on the `valid` or `test` split."""
    histories, targets = data.split_histories(split)
    return {mode: history_ranks(model, histories, targets, mode, max_len, batch_size, progress=progress)
            for mode in modes}


def evaluate(model: RecBLR, data: SequenceData, *args, **kwargs) -> dict[str, dict[str, float]]:
    """{mode: {metric@k: value}} on the `valid` or `test` split (arguments as `evaluate_ranks`)."""
    return {mode: metrics_from_ranks(r) for mode, r in evaluate_ranks(model, data, *args, **kwargs).items()}


def stream_minus_window(ranks: dict[str, np.ndarray], k: int = 10) -> dict[str, float]:
    """Paired per-user NDCG@k of `stream` minus `window`: the gap between serving's view and the
    paper's, with its standard error over users, so a run says whether the gap is noise."""
    diff = ndcg_per_user(ranks["stream"], k) - ndcg_per_user(ranks["window"], k)
    window = float(ndcg_per_user(ranks["window"], k).mean())
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    mean = float(diff.mean())
    return {  # None where undefined (JSON has no NaN)
        f"ndcg@{k}": mean,
        "standard_error": se,
        "relative": mean / window if window > 0 else None,
        "standard_errors": mean / se if se > 0 else None,
    }
