"""Next-item losses: full-catalog cross-entropy, BPR, and sampled softmax for large catalogs.

All three take the hidden vectors `h` (P, D) of P (prefix, next item) pairs, their targets
(P,) and the item embedding table (n_items + 1, D; row 0 is padding, never a candidate).

Full cross-entropy builds a (P, n_items + 1) logit matrix: exact, and the right choice while
that matrix is small. Sampled softmax scores each pair against its own target and N negatives
shared by the whole batch (one (P, N + 1) matrix, one gather of N embedding rows), so a step's
memory and time do not grow with the catalog. Negatives come from a proposal Q (uniform, or
item popularity to a power); subtracting log Q from every logit (the log-Q correction) makes
the sampled softmax an estimate of the full one instead of a softmax biased against popular
items. A negative that equals a row's target (an "accidental hit") is masked out of that row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from recblr.config import LOSSES, SAMPLERS
from recblr.errors import RecblrError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def rows(emb: torch.Tensor, idx: torch.Tensor, sparse: bool = False) -> torch.Tensor:
    """Embedding rows `emb[idx]`. With `sparse`, the table's gradient is a sparse tensor over
    the rows gathered (what SparseAdam takes), not a dense table-sized one; without it the plain
    indexing is kept, so dense training stays bit-identical to what it was."""
    return F.embedding(idx, emb, sparse=True) if sparse else emb[idx]


def full_cross_entropy(h: torch.Tensor, targets: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Softmax over the whole catalog (padding excluded)."""
    logits = h @ emb.t()
    logits[..., 0] = float("-inf")
    return F.cross_entropy(logits, targets)


def bpr(
    h: torch.Tensor, targets: torch.Tensor, emb: torch.Tensor, gen: torch.Generator | None, sparse: bool = False,
) -> torch.Tensor:
    """BPR against one uniformly drawn negative per pair (`sparse`: see `rows`)."""
    neg = torch.randint(1, emb.shape[0], targets.shape, device=targets.device, generator=gen)
    diff = (h * rows(emb, targets, sparse)).sum(-1) - (h * rows(emb, neg, sparse)).sum(-1)
    return -F.logsigmoid(diff).mean()


class NegativeSampler:
    """Draws item ids 1..n_items with replacement from a fixed proposal; knows each id's log Q.

    `uniform`: every item equally likely. `popularity`: proportional to (training count + 1)
    raised to `alpha` (0.75 by default, flattening the head as word2vec does); the +1 keeps
    items unseen in training reachable.
    """

    def __init__(self, probs: np.ndarray, device: torch.device | str = "cpu"):
        p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
        if p.ndim != 1 or p.numel() < 2 or float(p[0]) != 0.0 or not bool((p[1:] > 0).all()):
            raise ValueError("probs: one entry per embedding row, 0 for padding, > 0 elsewhere")
        p = p / p.sum()
        self.log_q = p.log().float().to(device)  # log Q per row; -inf for padding
        self.uniform = bool(torch.allclose(p[1:], p[1:].mean().expand(p.numel() - 1)))
        self.n_rows = p.numel()
        self._cdf = p.cumsum(0).to(device)
        self._cdf[-1] = 1.0

    @classmethod
    def build(
        cls, kind: str, n_items: int, train_seqs: Sequence[np.ndarray] = (), alpha: float = 0.75,
        device: torch.device | str = "cpu",
    ) -> NegativeSampler:
        if kind == "uniform":
            probs = np.ones(n_items + 1)
        elif kind == "popularity":
            counts = np.zeros(n_items + 1)
            for s in train_seqs:
                np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)
            probs = (counts + 1.0) ** alpha
        else:
            raise RecblrError(f"--sampler {kind!r}: use one of {', '.join(SAMPLERS)}")
        probs[0] = 0.0
        return cls(probs, device)

    def sample(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """n ids (int64), drawn with replacement."""
        if self.uniform:
            return torch.randint(1, self.n_rows, (n,), device=self._cdf.device, generator=gen)
        u = torch.rand(n, dtype=torch.float64, device=self._cdf.device, generator=gen)
        return torch.searchsorted(self._cdf, u, right=True).clamp_(1, self.n_rows - 1)


def sampled_softmax(
    h: torch.Tensor,
    targets: torch.Tensor,
    emb: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor,
    sparse: bool = False,
) -> torch.Tensor:
    """Cross-entropy of each target against N shared negatives (`sparse`: see `rows`).

    Every logit, the target's included, is corrected by the log of the item's expected count
    among the N draws, log(N Q(item)): the sum over negatives of exp(s)/(N Q) estimates the
    full softmax's partition without bias, so the gradient estimates the full one's. Drawing
    each item once with N = n_items under a uniform Q gives back the full cross-entropy.
    """
    log_n = float(np.log(negatives.numel()))
    pos = (h * rows(emb, targets, sparse)).sum(-1) - (log_q[targets] + log_n)  # (P,)
    neg = h @ rows(emb, negatives, sparse).t() - (log_q[negatives] + log_n)  # (P, N)
    neg = neg.masked_fill(negatives.view(1, -1) == targets.view(-1, 1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def make_loss(
    kind: str,
    emb: torch.nn.Embedding,
    gen: torch.Generator | None = None,
    negatives: int = 0,
    sampler: NegativeSampler | None = None,
) -> LossFn:
    """The training loss `loss_fn(h, targets)` selected by `--loss`. Sampled softmax and BPR
    gather rows sparsely when the table's lookup is sparse (`emb.sparse`, set for training with
    `sparse_embeddings`), so the table gets one sparse gradient."""
    if kind == "ce":
        return lambda h, t: full_cross_entropy(h, t, emb.weight)
    if kind == "bpr":
        return lambda h, t: bpr(h, t, emb.weight, gen, emb.sparse)
    if kind == "sampled":
        if negatives < 1:
            raise RecblrError(f"--negatives {negatives}: sampled softmax needs at least 1 negative")
        if sampler is None:
            raise ValueError("sampled softmax needs a NegativeSampler")

        def loss_fn(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return sampled_softmax(h, t, emb.weight, sampler.sample(negatives, gen), sampler.log_q, emb.sparse)

        return loss_fn
    raise RecblrError(f"--loss {kind!r}: use one of {', '.join(LOSSES)}")
