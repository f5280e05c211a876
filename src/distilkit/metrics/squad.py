"""SQuAD v1.1 / v2.0 scoring with the official evaluation scripts' semantics.

Owns answer normalisation, token F1 / exact match, the v1.1 and v2.0 aggregate scores
(including v2's HasAns/NoAns breakdown and best no-answer threshold sweep), and reading
the official SQuAD JSON layout. Pure Python; no model or tokenizer involved.
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "SquadExample",
    "compute_exact",
    "compute_f1",
    "get_tokens",
    "iter_examples",
    "load_squad",
    "normalize_answer",
    "squad_v1",
    "squad_v2",
]

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as the official scripts: "–" survives
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


class SquadExample(NamedTuple):
    """One question, flattened out of the nested SQuAD JSON."""

    id: str
    question: str
    context: str
    gold_texts: list[str]
    is_impossible: bool


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    The order matters and is the official one: punctuation goes before articles, so
    "a-team" becomes "ateam" (no article left) while "the–end" loses "the" because the en
    dash is not ASCII punctuation and is a word boundary.
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def get_tokens(s: str) -> list[str]:
    """Whitespace tokens of the normalised answer; [] for an empty string."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(gold: str, pred: str) -> int:
    """1 if the normalised strings are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(pred))


def compute_f1(gold: str, pred: str) -> float:
    """Token-overlap F1 (SQuAD v2.0 rule).

    If either side normalises to no tokens, F1 is 1 when both are empty and 0 otherwise:
    this is how v2.0 rewards a correct "no answer".
    """
    gold_toks = get_tokens(gold)
    pred_toks = get_tokens(pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    return _overlap_f1(gold_toks, pred_toks)


def _f1_v1(gold: str, pred: str) -> float:
    """Token F1 as in the v1.1 script: no overlap (even both empty) scores 0."""
    return _overlap_f1(normalize_answer(gold).split(), normalize_answer(pred).split())


def _overlap_f1(gold_toks: list[str], pred_toks: list[str]) -> float:
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def load_squad(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an official SQuAD JSON file: ``{"version", "data": [{"paragraphs": [...]}]}``."""
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f)
    if not isinstance(dataset, dict) or "data" not in dataset:
        raise ValueError(f"{path}: not a SQuAD file (no top-level 'data' list)")
    return dataset


def _articles(dataset: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    # The official scripts take dataset_json["data"]; accept the whole file as well.
    if isinstance(dataset, Mapping):
        return dataset["data"]
    return dataset


def iter_examples(dataset: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Iterator[SquadExample]:
    """Yield ``(id, question, context, gold_texts, is_impossible)`` for every question.

    ``dataset`` is the loaded JSON or its ``"data"`` list. ``gold_texts`` are the raw
    answer texts (v2 unanswerable questions have none). ``is_impossible`` is the v2 flag
    when present, otherwise whether the question has no answers.
    """
    for article in _articles(dataset):
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                golds = [a["text"] for a in qa.get("answers", [])]
                impossible = bool(qa.get("is_impossible", not golds))
                yield SquadExample(qa["id"], qa.get("question", ""), context, golds, impossible)


def _as_examples(dataset_or_examples: Any) -> list[SquadExample]:
    """Normalise the accepted inputs to a list of SquadExample.

    Accepted: the SQuAD JSON dict, its ``"data"`` list, or an iterable of examples given
    as SquadExample/5-tuples or as mappings with ``"id"`` and ``"answers"`` (either a list
    of ``{"text": ...}`` or the Hugging Face datasets form ``{"text": [...], ...}``).
    """
    if isinstance(dataset_or_examples, Mapping):
        return list(iter_examples(dataset_or_examples))
    items = list(dataset_or_examples)
    if not items:
        return []
    first = items[0]
    if isinstance(first, Mapping) and "paragraphs" in first:
        return list(iter_examples(items))
    out: list[SquadExample] = []
    for item in items:
        if isinstance(item, Mapping):
            answers = item.get("answers", [])
            if isinstance(answers, Mapping):  # datasets' columnar {"text": [...], "answer_start": [...]}
                golds = list(answers.get("text", []))
            else:
                golds = [a["text"] if isinstance(a, Mapping) else str(a) for a in answers]
            impossible = bool(item.get("is_impossible", not golds))
            out.append(SquadExample(item["id"], item.get("question", ""), item.get("context", ""), golds, impossible))
        else:
            qid, question, context, golds, impossible = item
            out.append(SquadExample(qid, question, context, list(golds), bool(impossible)))
    return out


def _max_over_golds(metric: Callable[[str, str], float], pred: str, golds: Iterable[str]) -> float:
    return max(metric(gold, pred) for gold in golds)


def squad_v1(dataset_or_examples: Any, predictions: Mapping[str, str]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1, in percent, each the max over the gold answers.

    As the v1.1 script, a question with no prediction scores 0 but still counts in the
    total. A question with no gold answers (not valid v1.1 data) scores 0 as well rather
    than failing.
    """
    examples = _as_examples(dataset_or_examples)
    if not examples:
        raise ValueError("squad_v1: no questions to score")
    exact = f1 = 0.0
    for ex in examples:
        if ex.id not in predictions or not ex.gold_texts:
            continue
        pred = predictions[ex.id]
        exact += _max_over_golds(lambda g, p: float(compute_exact(g, p)), pred, ex.gold_texts)
        f1 += _max_over_golds(_f1_v1, pred, ex.gold_texts)
    total = len(examples)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _eval_dict(exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]) -> dict[str, float]:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def _best_thresh(
    preds: Mapping[str, str],
    scores: Mapping[str, float],
    na_probs: Mapping[str, float],
    has_ans: Mapping[str, bool],
) -> tuple[float, float]:
    """The official ``find_best_thresh`` sweep.

    Start from "abstain everywhere" (score = number of unanswerable questions), then
    answer questions in increasing na_prob order: an answerable one adds its raw score, an
    unanswerable one loses its point if the prediction is non-empty. The threshold is the
    na_prob of the question at which the running score peaked (first peak wins; ties in
    na_prob are swept one question at a time, in ``na_probs`` order, exactly as official).
    """
    cur = best = float(sum(1 for v in has_ans.values() if not v))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):  # stable: ties keep insertion order
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1.0 if preds[qid] else 0.0
        cur += diff
        if cur > best:
            best = cur
            best_thresh = na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def squad_v2(
    dataset: Any,
    predictions: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """SQuAD v2.0 scores, as the official script's ``main`` computes them.

    Returns ``exact``, ``f1``, ``total``; ``HasAns_*`` / ``NoAns_*`` (exact, f1, total) for
    whichever of the two groups is non-empty; and, when ``na_probs`` is given,
    ``best_exact``, ``best_exact_thresh``, ``best_f1``, ``best_f1_thresh``. All scores are
    percentages. Gold answers that normalise to "" are dropped and a question left with
    none is scored against the single gold answer "". HasAns/NoAns follow the script's
    ``bool(answers)`` (any gold answer at all), not the ``is_impossible`` flag. A
    prediction counts as "no answer" when ``na_probs[qid] > na_prob_thresh``.

    Semantics choices where the official script has no usable behaviour:

    * A question missing from ``predictions`` is scored as if the prediction were "" (the
      script prints "Missing prediction" and then crashes in the breakdown): 0 for an
      answerable question, 1 for an unanswerable one, and it counts in every total.
    * A question missing from ``na_probs`` gets na_prob 0.0 (the script's default when no
      na_prob file is given), swept after the given ones on ties.
    """
    examples = _as_examples(dataset)
    if not examples:
        raise ValueError("squad_v2: no questions to score")

    preds: dict[str, str] = {}
    has_ans: dict[str, bool] = {}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for ex in examples:
        has_ans[ex.id] = bool(ex.gold_texts)
        golds = [g for g in ex.gold_texts if normalize_answer(g)] or [""]
        pred = predictions.get(ex.id, "")
        preds[ex.id] = pred
        exact_raw[ex.id] = _max_over_golds(lambda g, p: float(compute_exact(g, p)), pred, golds)
        f1_raw[ex.id] = _max_over_golds(compute_f1, pred, golds)

    probs: dict[str, float] = dict(na_probs) if na_probs is not None else {}
    for qid in has_ans:
        probs.setdefault(qid, 0.0)

    def thresholded(raw: Mapping[str, float]) -> dict[str, float]:
        # Predicted "no answer" scores 1 exactly when the question is unanswerable.
        return {q: float(not has_ans[q]) if probs[q] > na_prob_thresh else s for q, s in raw.items()}

    exact = thresholded(exact_raw)
    f1 = thresholded(f1_raw)
    out: dict[str, float] = _eval_dict(exact, f1, list(has_ans))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, v in has_ans.items() if v is wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _eval_dict(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = _best_thresh(preds, exact_raw, probs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_thresh(preds, f1_raw, probs, has_ans)
    return out
