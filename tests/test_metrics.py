"""Table-driven tests for distilkit.metrics, with expected values worked out by hand."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from distilkit.metrics import (
    accuracy,
    classification_report,
    compute_exact,
    compute_f1,
    entity_scores,
    get_entities,
    get_tokens,
    iter_examples,
    load_squad,
    macro_f1,
    normalize_answer,
    pseudo_perplexity,
    squad_v1,
    squad_v2,
    topk_accuracy,
)

# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("The Cat", "cat"),
        ("  Hello,   World!  ", "hello world"),
        ("foo\t\n bar", "foo bar"),
        ("an apple a day", "apple day"),
        ("the a an", ""),
        ("", ""),
        ("Anthem", "anthem"),  # articles only as whole words
        ("theater and another", "theater and another"),
        ("a-team", "ateam"),  # punctuation goes first, so no article is left to remove
        ("U.S.A.", "usa"),
        ("1,000", "1000"),
        ("l'été", "lété"),  # accents are kept (only lower-cased)
        ("CAFÉ", "café"),
        ("Paris – London", "paris – london"),  # en dash is not ASCII punctuation
        ("the–end", "–end"),  # ...but it is a word boundary, so "the" goes
        ("theé", "theé"),  # é is a word character under re.UNICODE: no boundary, no article
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_get_tokens() -> None:
    assert get_tokens("") == []
    assert get_tokens("The quick, brown fox") == ["quick", "brown", "fox"]


@pytest.mark.parametrize(
    ("gold", "pred", "exact", "f1"),
    [
        ("Paris", "paris.", 1, 1.0),
        ("the Eiffel Tower", "Eiffel tower", 1, 1.0),
        # common=2, P=2/2, R=2/3 -> F1 = 2*(1*2/3)/(5/3) = 0.8
        ("big red dog", "red dog", 0, 0.8),
        # gold [cat, sat], pred [cat, sat, on, mat]: P=1/2, R=1 -> 2/3
        ("the cat sat", "cat sat on the mat", 0, 2 / 3),
        # multiset overlap: min(2,3) dogs = 2 shared; P=R=2/3
        ("dog dog cat", "dog dog dog", 0, 2 / 3),
        ("blue", "green", 0, 0.0),
        # v2 empty rule: both empty -> 1, one empty -> 0
        ("", "", 1, 1.0),
        ("", "something", 0, 0.0),
        ("something", "", 0, 0.0),
        ("the", "a", 1, 1.0),  # both normalise to no tokens
    ],
)
def test_exact_and_f1(gold: str, pred: str, exact: int, f1: float) -> None:
    assert compute_exact(gold, pred) == exact
    assert compute_f1(gold, pred) == pytest.approx(f1)


def _dataset(qas: list[dict]) -> dict:
    return {"version": "x", "data": [{"title": "t", "paragraphs": [{"context": "ctx", "qas": qas}]}]}


def _qa(qid: str, *golds: str, impossible: bool | None = None) -> dict:
    qa: dict = {"id": qid, "question": f"{qid}?", "answers": [{"text": g, "answer_start": 0} for g in golds]}
    if impossible is not None:
        qa["is_impossible"] = impossible
    return qa


def test_squad_v1_max_over_golds_and_missing() -> None:
    ds = _dataset(
        [
            _qa("q1", "Denver Broncos", "the Broncos"),  # pred "Broncos": EM 1 via 2nd gold
            _qa("q2", "big red dog", "a dog"),  # pred "red dog": F1 max(0.8, 2/3) = 0.8
            _qa("q3", "seven"),  # no prediction: 0, but counted
            _qa("q4", "The"),  # v1 quirk: "the" vs "a" is EM 1 but F1 0 (no tokens shared)
        ]
    )
    preds = {"q1": "Broncos", "q2": "red dog", "q4": "a"}
    out = squad_v1(ds, preds)
    assert out["exact_match"] == pytest.approx(100 * 2 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 0.8 + 0 + 0) / 4)
    # Same scores from the "data" list and from flattened examples (tuples or HF-style dicts).
    assert squad_v1(ds["data"], preds) == out
    assert squad_v1(list(iter_examples(ds)), preds) == out
    hf = [
        {"id": "q1", "answers": {"text": ["Denver Broncos", "the Broncos"], "answer_start": [0, 0]}},
        {"id": "q2", "answers": {"text": ["big red dog", "a dog"], "answer_start": [0, 0]}},
        {"id": "q3", "answers": {"text": ["seven"], "answer_start": [0]}},
        {"id": "q4", "answers": {"text": ["The"], "answer_start": [0]}},
    ]
    assert squad_v1(hf, preds) == out


def test_load_squad_and_iter_examples(tmp_path) -> None:
    ds = _dataset([_qa("a", "x", impossible=False), _qa("b", impossible=True), _qa("c")])
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(ds), encoding="utf-8")
    loaded = load_squad(path)
    assert loaded == ds
    assert list(iter_examples(loaded)) == [
        ("a", "a?", "ctx", ["x"], False),
        ("b", "b?", "ctx", [], True),
        ("c", "c?", "ctx", [], True),  # no flag: impossible iff no answers
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError):
        load_squad(bad)


# Four questions for the v2 breakdown and threshold sweep:
#   q1 answerable, gold "Paris",                     pred "Paris",     na_prob 0.1 -> EM 1, F1 1
#   q2 answerable, gold "big red dog" / "the dog",   pred "red dog",   na_prob 0.3 -> EM 0, F1 max(0.8, 2/3) = 0.8
#   q3 unanswerable,                                 pred "something", na_prob 0.6 -> EM 0, F1 0
#   q4 answerable, gold "blue",                      pred "green",     na_prob 0.8 -> EM 0, F1 0
# At the default threshold 1.0 nothing is turned into "no answer":
#   exact = 100*(1+0+0+0)/4 = 25, f1 = 100*(1+0.8+0+0)/4 = 45
#   HasAns (q1,q2,q4): exact 100/3, f1 100*1.8/3 = 60;   NoAns (q3): exact 0, f1 0
# Best-threshold sweep (start = #unanswerable = 1, answer questions by increasing na_prob):
#   F1:    q1 +1 -> 2 (best, thr 0.1); q2 +0.8 -> 2.8 (best, thr 0.3); q3 -1 -> 1.8; q4 +0 -> 1.8
#          best_f1 = 100*2.8/4 = 70, best_f1_thresh = 0.3
#   exact: q1 +1 -> 2 (best, thr 0.1); q2 +0 -> 2 (not better); q3 -1 -> 1; q4 +0 -> 1
#          best_exact = 100*2/4 = 50, best_exact_thresh = 0.1
# Cross-check at na_prob_thresh=0.5: q3 and q4 become "no answer" -> q3 scores 1, q4 0:
#   exact = 100*(1+0+1+0)/4 = 50, f1 = 100*(1+0.8+1+0)/4 = 70 (= best_f1 above).
V2_DS = _dataset(
    [
        _qa("q1", "Paris"),
        _qa("q2", "big red dog", "the dog"),
        _qa("q3", impossible=True),
        _qa("q4", "blue"),
    ]
)
V2_PREDS = {"q1": "Paris", "q2": "red dog", "q3": "something", "q4": "green"}
V2_NA = {"q1": 0.1, "q2": 0.3, "q3": 0.6, "q4": 0.8}


def test_squad_v2_breakdown() -> None:
    out = squad_v2(V2_DS, V2_PREDS)
    expected = {
        "exact": 25.0,
        "f1": 45.0,
        "total": 4,
        "HasAns_exact": 100 / 3,
        "HasAns_f1": 60.0,
        "HasAns_total": 3,
        "NoAns_exact": 0.0,
        "NoAns_f1": 0.0,
        "NoAns_total": 1,
    }
    assert out.keys() == expected.keys()  # no best_* without na_probs
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key


def test_squad_v2_best_thresholds() -> None:
    out = squad_v2(V2_DS, V2_PREDS, na_probs=V2_NA)
    assert out["exact"] == pytest.approx(25.0)  # default threshold 1.0 changes nothing
    assert out["best_f1"] == pytest.approx(70.0)
    assert out["best_f1_thresh"] == 0.3
    assert out["best_exact"] == pytest.approx(50.0)
    assert out["best_exact_thresh"] == 0.1

    at_half = squad_v2(V2_DS, V2_PREDS, na_probs=V2_NA, na_prob_thresh=0.5)
    assert at_half["exact"] == pytest.approx(50.0)
    assert at_half["f1"] == pytest.approx(70.0)
    assert at_half["NoAns_exact"] == pytest.approx(100.0)
    assert at_half["HasAns_f1"] == pytest.approx(60.0)  # q4 was wrong either way


def test_squad_v2_missing_predictions_and_groups() -> None:
    # Missing predictions count as "": 0 for answerable q1, 1 for unanswerable q3.
    out = squad_v2(V2_DS, {"q2": "big red dog", "q4": "blue"})
    assert out["total"] == 4
    assert out["exact"] == pytest.approx(100 * (0 + 1 + 1 + 1) / 4)
    assert out["HasAns_exact"] == pytest.approx(100 * 2 / 3)
    assert out["NoAns_exact"] == pytest.approx(100.0)

    only_answerable = squad_v2(_dataset([_qa("a", "x")]), {"a": "x"})
    assert "NoAns_total" not in only_answerable and only_answerable["HasAns_total"] == 1
    only_impossible = squad_v2(_dataset([_qa("b", impossible=True)]), {"b": ""})
    assert "HasAns_total" not in only_impossible and only_impossible["exact"] == 100.0

    # Official quirk: a gold text that normalises to "" is dropped, leaving [""] as the
    # gold, yet the question still counts as HasAns (it has an answers entry).
    quirk = squad_v2(_dataset([_qa("c", "The")]), {"c": ""})
    assert quirk["HasAns_total"] == 1 and quirk["exact"] == 100.0


# --------------------------------------------------------------------------- entities


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["O", "I-PER", "I-PER", "O"], [("PER", 1, 2)]),  # stray I- after O opens a chunk
        (["I-PER", "O"], [("PER", 0, 0)]),  # ...also at position 0
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # type change mid-chunk
        (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
        (["O", "B-ORG", "I-ORG"], [("ORG", 1, 2)]),  # trailing entity closed by the end
        (["S-PER", "B-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 2)]),  # IOBES
        (["E-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 1)]),  # E- always closes
        (["I-MISC", "I-MISC", "B-MISC"], [("MISC", 0, 1), ("MISC", 2, 2)]),  # IOB1
        (["B", "I", "O"], [("_", 0, 1)]),  # untyped tags get type "_"
        (["O", "O"], []),
        ([], []),
    ],
)
def test_get_entities(tags: list[str], expected: list[tuple[str, int, int]]) -> None:
    assert get_entities(tags) == expected


def test_entity_scores_by_hand() -> None:
    # seqeval's docstring example: MISC span is off by one, PER exact -> 1 of 2 right.
    y_true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    out = entity_scores(y_true, y_pred)
    assert (out["precision"], out["recall"], out["f1"]) == (0.5, 0.5, 0.5)
    assert out["per_type"] == {
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }

    # Gold PER(0,1), LOC(3,3); predicted those plus a spurious ORG(4,4):
    # P = 2/3, R = 2/2, F1 = 2*(2/3)/(5/3) = 0.8; ORG has support 0 and scores 0.
    out = entity_scores([["B-PER", "I-PER", "O", "B-LOC", "O"]], [["B-PER", "I-PER", "O", "B-LOC", "B-ORG"]])
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == 1.0
    assert out["f1"] == pytest.approx(0.8)
    assert out["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}

    # Entities never merge across sentences, and identical spans in different sentences
    # are distinct entities: 2 gold, 1 predicted and right.
    out = entity_scores([["I-PER"], ["I-PER"]], [["I-PER"], ["O"]])
    assert (out["precision"], out["recall"]) == (1.0, 0.5)

    empty = entity_scores([["O"]], [["O"]])
    assert (empty["precision"], empty["recall"], empty["f1"], empty["per_type"]) == (0.0, 0.0, 0.0, {})

    with pytest.raises(ValueError):
        entity_scores([["O", "O"]], [["O"]])


# Library cross-checks are marked slow (run with `pytest -m slow`): seqeval and sklearn
# cost ~1 s of scikit-learn import, which would break this file's <2 s budget.
@pytest.mark.slow
def test_entity_scores_match_seqeval() -> None:
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(1234)
    tags = ["O", "O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "I-MISC", "B"]
    for _ in range(200):
        y_true = [[rng.choice(tags) for _ in range(rng.randint(0, 6))] for _ in range(rng.randint(1, 3))]
        y_pred = [[rng.choice(tags) for _ in sent] for sent in y_true]
        for sent in y_true:
            assert get_entities(sent) == seqeval.sequence_labeling.get_entities(sent)
        ours = entity_scores(y_true, y_pred)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(y_true, y_pred, zero_division=0))
        assert ours["recall"] == pytest.approx(seqeval.recall_score(y_true, y_pred, zero_division=0))
        assert ours["f1"] == pytest.approx(seqeval.f1_score(y_true, y_pred, zero_division=0))


# --------------------------------------------------------------------------- classification

# Hand example: y_true = [0,0,1,1,2], y_pred = [0,1,1,1,0]; accuracy 3/5.
#   class 0: tp 1, predicted 2, support 2 -> P .5, R .5, F1 .5
#   class 1: tp 2, predicted 3, support 2 -> P 2/3, R 1, F1 0.8
#   class 2: tp 0, predicted 0, support 1 -> 0, 0, 0
#   macro F1 = 1.3/3; weighted F1 = (.5*2 + .8*2 + 0*1)/5 = 0.52
CLS_TRUE = [0, 0, 1, 1, 2]
CLS_PRED = [0, 1, 1, 1, 0]


def test_accuracy_and_macro_f1() -> None:
    assert accuracy(CLS_TRUE, CLS_PRED) == pytest.approx(0.6)
    assert macro_f1(CLS_TRUE, CLS_PRED) == pytest.approx(1.3 / 3)
    # Label 3 occurs nowhere, so it is left out rather than averaged in as 0: (.5+.8)/2.
    assert macro_f1(CLS_TRUE, CLS_PRED, labels=[0, 1, 3]) == pytest.approx(0.65)
    # A class that is only predicted (never gold) counts, with F1 0.
    assert macro_f1(["a", "a"], ["a", "b"]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(["x", "y"], ["x", "y"]) == 1.0
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_classification_report() -> None:
    rep = classification_report(CLS_TRUE, CLS_PRED)
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["macro_f1"] == pytest.approx(1.3 / 3)
    assert rep["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert rep["macro_recall"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert rep["weighted_f1"] == pytest.approx(0.52)
    assert rep["support"] == 5
    assert list(rep["per_class"]) == [0, 1, 2]
    assert rep["per_class"][1] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})


@pytest.mark.slow
def test_macro_f1_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(7)
    for _ in range(100):
        n = rng.randint(1, 12)
        y_true = [rng.randint(0, 3) for _ in range(n)]
        y_pred = [rng.randint(0, 4) for _ in range(n)]
        expected = metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
        assert macro_f1(y_true, y_pred) == pytest.approx(expected)


# --------------------------------------------------------------------------- fill-mask


@pytest.mark.parametrize(("k", "expected"), [(1, 1 / 3), (2, 2 / 3), (3, 2 / 3), (10, 2 / 3)])
def test_topk_accuracy(k: int, expected: float) -> None:
    targets = [5, 7, 9]
    ranked = [[5, 1, 2], [1, 7, 3], [1, 2, 3]]  # hit at rank 1, hit at rank 2, miss
    assert topk_accuracy(targets, ranked, k) == pytest.approx(expected)
    assert topk_accuracy(np.array(targets), np.array(ranked), k) == pytest.approx(expected)


def test_topk_accuracy_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        topk_accuracy([1], [[1]], 0)
    with pytest.raises(ValueError):
        topk_accuracy([1, 2], [[1]], 1)


def test_pseudo_perplexity() -> None:
    # mean(ln 2, ln 8) = ln 4 -> PPPL 4
    assert pseudo_perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0)
    assert pseudo_perplexity(np.zeros(5)) == 1.0
    with pytest.raises(ValueError):
        pseudo_perplexity([])
