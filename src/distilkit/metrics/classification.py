"""Sequence-classification metrics: accuracy, macro F1 and a per-class report.

Pure Python over label lists (ints or strings, anything hashable); the per-class
precision/recall/F1 follow scikit-learn's definitions with zero_division=0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["accuracy", "classification_report", "macro_f1"]


def _check(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels, y_pred {len(y_pred)}")
    if not y_true:
        raise ValueError("no labels to score")


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Fraction of positions where the prediction equals the gold label."""
    _check(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def _per_class(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None
) -> dict[Hashable, dict[str, float]]:
    """Precision/recall/F1/support per class, over the classes that occur.

    With ``labels=None`` the classes are those in y_true or y_pred (sklearn's default,
    sorted when sortable). With explicit ``labels`` only those are reported, in that
    order, but a label that occurs in neither list is dropped: it has no support and no
    prediction, so it says nothing about the model (sklearn would average in a 0 here).
    """
    _check(y_true, y_pred)
    support = Counter(y_true)
    predicted = Counter(y_pred)
    hits = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    if labels is None:
        present = set(support) | set(predicted)
        try:
            order: list[Hashable] = sorted(present)  # type: ignore[type-var]
        except TypeError:  # mixed label types: keep first-seen order
            order = list(dict.fromkeys([*y_true, *y_pred]))
    else:
        order = [lab for lab in dict.fromkeys(labels) if support[lab] or predicted[lab]]
    out: dict[Hashable, dict[str, float]] = {}
    for lab in order:
        tp, n_pred, n_true = hits[lab], predicted[lab], support[lab]
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[lab] = {"precision": precision, "recall": recall, "f1": f1, "support": n_true}
    return out


def macro_f1(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> float:
    """Unweighted mean of per-class F1 over the classes present (see ``_per_class``)."""
    per_class = _per_class(y_true, y_pred, labels)
    if not per_class:
        raise ValueError("none of the given labels occurs in y_true or y_pred")
    return sum(c["f1"] for c in per_class.values()) / len(per_class)


def classification_report(
    y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> dict[str, Any]:
    """Accuracy, macro and support-weighted averages, and per-class scores.

    Returns ``{"accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1",
    "support", "per_class": {label: {"precision", "recall", "f1", "support"}}}`` where
    ``support`` is the number of examples and accuracy is over all of them (labels
    outside ``labels`` included).
    """
    per_class = _per_class(y_true, y_pred, labels)
    if not per_class:
        raise ValueError("none of the given labels occurs in y_true or y_pred")
    n = len(per_class)
    total_support = sum(c["support"] for c in per_class.values())
    weighted = (
        sum(c["f1"] * c["support"] for c in per_class.values()) / total_support if total_support else 0.0
    )
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": sum(c["precision"] for c in per_class.values()) / n,
        "macro_recall": sum(c["recall"] for c in per_class.values()) / n,
        "macro_f1": sum(c["f1"] for c in per_class.values()) / n,
        "weighted_f1": weighted,
        "support": len(y_true),
        "per_class": per_class,
    }
