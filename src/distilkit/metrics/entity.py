"""Entity-level (chunk) precision/recall/F1 with seqeval's default, non-strict semantics.

Owns chunk extraction from prefix tags (IOB1, IOB2, IOE, IOBES) exactly as seqeval's
``get_entities`` with its ``end_of_chunk`` / ``start_of_chunk`` rules, and micro-averaged
plus per-type scores as ``seqeval.metrics.classification_report`` reports them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

__all__ = ["end_of_chunk", "entity_scores", "get_entities", "start_of_chunk"]


def _split(tag: str) -> tuple[str, str]:
    # seqeval reads the first character as the tag and what follows the first "-" after
    # it as the type ("B-PER" -> ("B", "PER"), "O" -> ("O", "_")); an untyped tag gets "_".
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ended at the previous token (seqeval's rule)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    # A type change closes any open chunk: "B-PER I-LOC" is two chunks.
    return prev_tag not in ("O", ".") and prev_type != type_


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk starts at the current token (seqeval's rule).

    Non-strict: an I-/E- after O, E- or S- opens a chunk (IOB1 style), so a stray
    "O I-PER" still yields a PER entity.
    """
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(seq: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of one tag sequence as ``(type, start, end_inclusive)``, in order.

    >>> get_entities(["B-PER", "I-PER", "O", "I-LOC"])
    [('PER', 0, 1), ('LOC', 3, 3)]
    """
    prev_tag, prev_type, begin = "O", "", 0
    chunks: list[tuple[str, int, int]] = []
    # A trailing "O" sentinel closes an entity that runs to the end of the sequence.
    for i, label in enumerate([*seq, "O"]):
        tag, type_ = _split(label)
        if end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    # Undefined ratios are 0, as seqeval's default zero_division="warn" (minus the warning).
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro-averaged entity precision/recall/F1 and per-type scores.

    An entity counts as correct only if type, start and end all match. Returns
    ``{"precision", "recall", "f1", "per_type": {type: {"precision", "recall", "f1",
    "support"}}}`` with ``support`` the number of gold entities of that type; types that
    appear only in predictions are listed with support 0. Sentences are scored
    separately, which is what seqeval's flattening with an "O" separator amounts to.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} sequences, y_pred {len(y_pred)}")
    gold: dict[str, set[tuple[int, int, int]]] = defaultdict(set)
    pred: dict[str, set[tuple[int, int, int]]] = defaultdict(set)
    for sent, (t_seq, p_seq) in enumerate(zip(y_true, y_pred)):
        if len(t_seq) != len(p_seq):
            raise ValueError(f"sequence {sent}: {len(t_seq)} gold tags, {len(p_seq)} predicted")
        for type_, start, end in get_entities(t_seq):
            gold[type_].add((sent, start, end))
        for type_, start, end in get_entities(p_seq):
            pred[type_].add((sent, start, end))

    per_type: dict[str, dict[str, float]] = {}  # support is an int
    tp_all = pred_all = true_all = 0
    for type_ in sorted(set(gold) | set(pred)):
        tp = len(gold[type_] & pred[type_])
        n_pred, n_true = len(pred[type_]), len(gold[type_])
        p, r, f = _prf(tp, n_pred, n_true)
        per_type[type_] = {"precision": p, "recall": r, "f1": f, "support": n_true}
        tp_all, pred_all, true_all = tp_all + tp, pred_all + n_pred, true_all + n_true
    p, r, f = _prf(tp_all, pred_all, true_all)
    return {"precision": p, "recall": r, "f1": f, "per_type": per_type}
