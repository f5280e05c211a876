"""Masked-language-model metrics: top-k accuracy of predicted tokens and pseudo-perplexity.

Inputs are plain ids / floats (lists or numpy arrays) so the same code scores the
PyTorch model, the ONNX export and the reference pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["pseudo_perplexity", "topk_accuracy"]


def topk_accuracy(target_ids: Sequence[int], ranked_predictions: Sequence[Sequence[int]], k: int) -> float:
    """Fraction of masked positions whose target id is among the first ``k`` predictions.

    ``ranked_predictions[i]`` lists candidate ids for position ``i``, best first (e.g. a
    row of ``logits.argsort()[::-1]``); rows shorter than ``k`` are used as they are.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(target_ids) != len(ranked_predictions):
        raise ValueError(f"{len(target_ids)} targets but {len(ranked_predictions)} prediction rows")
    if len(target_ids) == 0:
        raise ValueError("no positions to score")
    hits = sum(int(t) in {int(c) for c in row[:k]} for t, row in zip(target_ids, ranked_predictions))
    return hits / len(target_ids)


def pseudo_perplexity(neg_log_likelihoods: Sequence[float]) -> float:
    """``exp(mean NLL)`` over masked tokens (Salazar et al., 2020), NLL in nats.

    Each entry is ``-log p(token_i | sentence with token_i masked)``; pass one entry per
    scored token across the whole corpus so that long sentences weigh more, as in the paper.
    """
    nll = np.asarray(neg_log_likelihoods, dtype=np.float64).ravel()
    if nll.size == 0:
        raise ValueError("no log-likelihoods to average")
    return math.exp(float(nll.mean()))
