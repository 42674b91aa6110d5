import math

import numpy as np
import torch

from recblr.evaluate import metrics_from_ranks, ranks_of_targets


def test_ranks_hand_computed():
    scores = torch.tensor([
        [float("-inf"), 0.1, 0.9, 0.5, 0.3],  # target 3 (0.5): only 0.9 above -> rank 2
        [float("-inf"), 0.7, 0.7, 0.1, 0.2],  # target 2 ties with 1 -> rank 1 (ties favour target)
        [float("-inf"), 0.0, 0.1, 0.2, 0.3],  # target 1 lowest -> rank 4
    ])
    ranks = ranks_of_targets(scores, torch.tensor([3, 2, 1]))
    assert ranks.tolist() == [2, 1, 4]


def test_metrics_hand_computed():
    ranks = np.array([1, 2, 11, 25])
    m = metrics_from_ranks(ranks)
    assert math.isclose(m["hr@10"], 2 / 4)
    assert math.isclose(m["hr@20"], 3 / 4)
    assert math.isclose(m["ndcg@10"], (1 + 1 / math.log2(3)) / 4)
    assert math.isclose(m["ndcg@20"], (1 + 1 / math.log2(3) + 1 / math.log2(12)) / 4)
    assert math.isclose(m["mrr@10"], (1 + 0.5) / 4)
    assert math.isclose(m["mrr@20"], (1 + 0.5 + 1 / 11) / 4)
