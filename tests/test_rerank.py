"""text-ranking against sentence-transformers' CrossEncoder on tiny cross-encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distilkit import pipeline
from distilkit.errors import InputError
from distilkit.tasks.text_ranking import rank

QUERY = "Where does John live?"
DOCS = ["My name is John and I live in Seattle.", "Paris is the capital of France and its largest city.",
        "Today is a beautiful day!", "Alice is sitting on the bench. Bob is sitting next to her.",
        " ".join(["Hugging Face Inc. is a company based in New York City."] * 20)]  # past the limit: cut


@pytest.fixture
def cross_encoder(classifier):
    return lambda family="bert", labels=None: classifier(family, labels or {0: "LABEL_0"}, seed=2, head_scale=30.0)


@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
def test_equals_cross_encoder(cross_encoder, family, one_thread):
    from sentence_transformers import CrossEncoder

    d = cross_encoder(family)
    ref = CrossEncoder(str(d), device="cpu")
    expected = ref.rank(QUERY, DOCS, return_documents=True)
    ours = pipeline("text-ranking", model=d)
    got = ours(QUERY, DOCS, return_text=True)
    assert [g["index"] for g in got] == [e["corpus_id"] for e in expected]
    assert [g["text"] for g in got] == [e["text"] for e in expected]
    np.testing.assert_allclose([g["score"] for g in got], [float(e["score"]) for e in expected], atol=1e-5)
    top = ours(QUERY, DOCS, top_k=2)
    assert [t["index"] for t in top] == [e["corpus_id"] for e in expected[:2]] and "text" not in top[0]
    raw = ours(QUERY, DOCS, activation="none")
    logits = ref.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(sorted(r["score"] for r in raw), sorted(logits), atol=1e-4)


def test_chosen_label_of_a_multi_label_head(cross_encoder, one_thread):
    from sentence_transformers import CrossEncoder

    d = cross_encoder("bert", {0: "irrelevant", 1: "relevant"})
    probs = CrossEncoder(str(d), device="cpu").predict([(QUERY, x) for x in DOCS], apply_softmax=True)
    got = pipeline("text-ranking", model=d)(QUERY, DOCS, label="relevant")
    np.testing.assert_allclose([g["score"] for g in sorted(got, key=lambda g: g["index"])], probs[:, 1], atol=1e-5)
    with pytest.raises(InputError) as e:
        pipeline("text-ranking", model=d)(QUERY, DOCS)
    assert e.value.field == "label"
    with pytest.raises(InputError) as e:
        pipeline("text-ranking", model=d)(QUERY, DOCS, label="nope")
    assert e.value.field == "label"


def test_rank_by_hand():
    assert rank([0.1, 0.9, 0.5], ["a", "b", "c"], top_k=2, return_text=True) == [
        {"index": 1, "score": 0.9, "text": "b"}, {"index": 2, "score": 0.5, "text": "c"}]
    assert [r["index"] for r in rank([0.5, 0.5, 0.7], ["a", "b", "c"])] == [2, 0, 1]  # ties keep input order
    for bad in (0, -2, 1.5, True):
        with pytest.raises(InputError):
            rank([0.1], ["a"], top_k=bad)


@pytest.mark.parametrize("query,docs,field", [
    ("", ["a"], "query"), (3, ["a"], "query"), ("q", [], "texts"), ("q", "a doc", "texts"),
    ("q", ["a", ""], "texts[1]"), ("q", ["a", None], "texts[1]"),
])
def test_bad_inputs(cross_encoder, query, docs, field):
    p = pipeline("text-ranking", model=cross_encoder())
    with pytest.raises(InputError) as e:
        p(query, docs)
    assert e.value.field == field


def test_too_long_without_truncation(cross_encoder):
    with pytest.raises(InputError) as e:
        pipeline("text-ranking", model=cross_encoder())(QUERY, DOCS, truncation=False)
    assert e.value.field == "texts[4]"


def test_refuses_a_checkpoint_without_a_classifier(checkpoint):
    with pytest.raises(ValueError, match="head"):
        pipeline("text-ranking", model=checkpoint("bert", "question-answering"))
    with pytest.raises(ValueError, match="head"):
        pipeline("text-ranking", model=checkpoint("bert", None))


def test_queries_batched_together_equal_one_by_one(cross_encoder, one_thread):
    p = pipeline("text-ranking", model=cross_encoder())
    items = [{"query": QUERY, "texts": DOCS[:3]}, {"query": "Who sits?", "texts": DOCS[2:]}]
    assert p.run(items, return_text=True) == [p(x["query"], x["texts"], return_text=True) for x in items]
    with pytest.raises(InputError) as e:
        p.run([items[0], {"query": "q", "texts": ["a", ""]}])
    assert e.value.field == "inputs[1].texts[1]"
