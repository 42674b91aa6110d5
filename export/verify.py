"""Parity between an exported cell and the full-sequence PyTorch model.

Stepping the ONNX cell through a history item by item must give the same top-K as the
model scoring the whole history at once (fp32: identical items except where scores tie
within `tie_tol`, scores within `atol`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from recblr.model import RecBLR
from recblr.runtime import contract as C

ATOL = 1e-4
TIE_TOL = 1e-5


def cpu_session(
    path: str | os.PathLike,
    *,
    optimize: bool = True,
    threads: int | None = None,
) -> ort.InferenceSession:
    """An onnxruntime CPU session (ORT_ENABLE_ALL unless optimize=False)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _pad(histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    if (lengths < 1).any():
        raise ValueError("every history needs at least one item")
    items = np.zeros((len(histories), int(lengths.max())), dtype=np.int64)
    for i, h in enumerate(histories):
        items[i, : len(h)] = h
    return items, lengths


def _exclude_matrix(exclude: Sequence[Sequence[int]] | None, n: int) -> np.ndarray:
    if exclude is None:
        return np.full((n, 1), -1, dtype=np.int64)
    width = max(1, max((len(e) for e in exclude), default=1))
    out = np.full((n, width), -1, dtype=np.int64)
    for i, e in enumerate(exclude):
        out[i, : len(e)] = e
    return out


def step_session(
    session: ort.InferenceSession,
    histories: Sequence[np.ndarray],
    exclude: Sequence[Sequence[int]] | None = None,
    state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feed each history to the cell item by item, all users in one batch per step.

    Users whose history is over drop out of the batch. Returns (state (N,S), top_items
    (N,K), top_scores (N,K)) after each user's last item; `exclude` applies at every step.
    """
    items, lengths = _pad(histories)
    n = len(histories)
    s_size = session.get_inputs()[1].shape[1]
    state = np.zeros((n, s_size), np.float32) if state is None else state.astype(np.float32)
    excl = _exclude_matrix(exclude, n)
    top_items = top_scores = None
    for t in range(items.shape[1]):
        active = np.nonzero(lengths > t)[0]
        out = session.run(
            None,
            {
                C.INPUT_ITEM: items[active, t],
                C.INPUT_STATE: state[active],
                C.INPUT_EXCLUDE: excl[active],
            },
        )
        state[active] = out[0]
        if top_items is None:
            top_items = np.zeros((n, out[1].shape[1]), np.int64)
            top_scores = np.zeros((n, out[2].shape[1]), np.float32)
        done = lengths[active] == t + 1
        top_items[active[done]] = out[1][done]
        top_scores[active[done]] = out[2][done]
    return state, top_items, top_scores


@torch.no_grad()
def reference_scores(
    model: RecBLR,
    histories: Sequence[np.ndarray],
    exclude: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """The full-sequence model's scores of every catalog row (N, n_items+1), float64.

    Padding (and `exclude`) get -inf.
    """
    was_training = model.training
    model.eval()
    try:
        items, lengths = _pad(histories)
        h = model.last_hidden(torch.from_numpy(items), torch.from_numpy(lengths))
        scores = model.item_scores(h.float()).double().numpy()
    finally:
        model.train(was_training)
    if exclude is not None:
        for i, e in enumerate(exclude):
            e = [j for j in e if j >= 0]
            scores[i, e] = -np.inf
    return scores


@dataclass
class ParityReport:
    users: int
    top_k: int
    max_score_diff: float = 0.0
    swapped: int = 0  # positions whose item differs but ties within tie_tol
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_topk(
    top_items: np.ndarray,
    top_scores: np.ndarray,
    ref_scores: np.ndarray,
    *,
    atol: float = ATOL,
    tie_tol: float = TIE_TOL,
    max_problems: int = 10,
) -> ParityReport:
    """Check the cell's top-K against reference full-catalog scores (see module doc)."""
    n, k = top_items.shape
    rep = ParityReport(users=n, top_k=k)
    ref = torch.from_numpy(ref_scores)
    ref_top_scores, ref_top_items = torch.topk(ref, k, dim=1)
    ref_top_scores, ref_top_items = ref_top_scores.numpy(), ref_top_items.numpy()

    def close(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
        both_inf = np.isneginf(a) & np.isneginf(b)
        with np.errstate(invalid="ignore"):
            return both_inf | (np.abs(a - b) <= tol)

    def problem(msg: str) -> None:
        if len(rep.problems) < max_problems:
            rep.problems.append(msg)
        elif len(rep.problems) == max_problems:
            rep.problems.append("...")

    finite = np.isfinite(top_scores) & np.isfinite(ref_top_scores)
    if finite.any():
        rep.max_score_diff = float(np.abs(top_scores - ref_top_scores)[finite].max())
    for u in range(n):
        if (top_items[u] == 0).any() and np.isfinite(ref_top_scores[u]).all():
            problem(f"user {u}: padding id 0 among top items")
        if len(set(top_items[u].tolist())) != k:
            problem(f"user {u}: repeated items in top-K {top_items[u].tolist()}")
        bad = ~close(top_scores[u].astype(np.float64), ref_top_scores[u], atol)
        for j in np.nonzero(bad)[0][:1]:
            problem(
                f"user {u} rank {j + 1}: score {top_scores[u, j]:.6g} vs model "
                f"{ref_top_scores[u, j]:.6g}"
            )
        for j in np.nonzero(top_items[u] != ref_top_items[u])[0]:
            it = int(top_items[u, j])
            if 0 <= it < ref.shape[1] and close(
                ref_scores[u, it : it + 1], ref_top_scores[u, j : j + 1], tie_tol
            )[0]:
                rep.swapped += 1
                continue
            problem(
                f"user {u} rank {j + 1}: item {it} vs model's {int(ref_top_items[u, j])} "
                f"(model scores {ref_scores[u, it] if 0 <= it < ref.shape[1] else 'n/a'} vs "
                f"{ref_top_scores[u, j]:.6g})"
            )
    return rep


def verify_cell(
    path_or_session: str | os.PathLike | ort.InferenceSession,
    model: RecBLR,
    histories: Sequence[np.ndarray],
    *,
    exclude: Sequence[Sequence[int]] | None = None,
    atol: float = ATOL,
    tie_tol: float = TIE_TOL,
) -> ParityReport:
    """Step the cell through `histories` and compare with the model's full-sequence top-K."""
    session = (
        path_or_session
        if isinstance(path_or_session, ort.InferenceSession)
        else cpu_session(path_or_session)
    )
    _, top_items, top_scores = step_session(session, histories, exclude)
    ref = reference_scores(model, histories, exclude)
    return compare_topk(top_items, top_scores, ref, atol=atol, tie_tol=tie_tol)


def random_histories(
    n_items: int, n: int, *, max_len: int = 200, seed: int = 0
) -> list[np.ndarray]:
    """`n` random histories with lengths 1..max_len over items 1..n_items."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=n)
    return [rng.integers(1, n_items + 1, size=int(L)).astype(np.int64) for L in lengths]
