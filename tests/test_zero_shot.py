"""zero-shot-classification against the transformers 4.57 zero-shot pipeline on tiny NLI checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from distilkit import pipeline
from distilkit.errors import InputError
from distilkit.tasks.zero_shot import entailment_id, zero_shot_scores

NLI = {0: "contradiction", 1: "neutral", 2: "entailment"}
NLI_FIRST = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}  # entailment first: contradiction is the last
LABELS = ["travel", "cooking", "dancing", "politics"]
SEQUENCES = ["I am going to Paris next week.", "Today is a beautiful day! The weather is glorious, isn't it?"]


@pytest.fixture
def nli(classifier):
    return lambda family="distilbert", labels=NLI: classifier(family, labels)


@pytest.mark.parametrize("family,labels", [("distilbert", NLI), ("bert", NLI_FIRST), ("roberta", NLI)])
@pytest.mark.parametrize("multi_label", [False, True])
def test_equals_transformers(nli, family, labels, multi_label, one_thread):
    from transformers import pipeline as hf_pipeline

    d = nli(family, labels)
    ref = hf_pipeline("zero-shot-classification", model=str(d), framework="pt")
    ours = pipeline("zero-shot-classification", model=d)
    for candidates in (LABELS, "travel, cooking", ["travel"]):
        expected = ref(SEQUENCES, candidate_labels=candidates, multi_label=multi_label,
                       hypothesis_template="This text is about {}.")
        got = ours(SEQUENCES, candidate_labels=candidates, multi_label=multi_label,
                   hypothesis_template="This text is about {}.")
        for e, g in zip(expected, got):
            assert g["sequence"] == e["sequence"] and g["labels"] == e["labels"]
            np.testing.assert_allclose(g["scores"], e["scores"], atol=1e-5)
    single = ours(SEQUENCES[0], LABELS)  # one sequence: one dict, default template
    expected = ref(SEQUENCES[0], LABELS)
    assert single["labels"] == expected["labels"]
    np.testing.assert_allclose(single["scores"], expected["scores"], atol=1e-5)
    assert abs(sum(single["scores"]) - 1) < 1e-5


def test_long_sequence_is_cut_not_the_hypothesis(nli, one_thread):
    from transformers import pipeline as hf_pipeline

    d = nli()
    long = " ".join(SEQUENCES * 30)
    got = pipeline("zero-shot-classification", model=d)(long, LABELS)
    expected = hf_pipeline("zero-shot-classification", model=str(d), framework="pt")(long, LABELS)
    assert got["labels"] == expected["labels"]
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-5)
    with pytest.raises(InputError) as e:
        pipeline("zero-shot-classification", model=d)(long, LABELS, truncation=False)
    assert e.value.field == "inputs[0]"


def test_scores_by_hand():
    logits = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)  # (labels, classes)
    single = zero_shot_scores("s", logits, ["a", "b"], 2, multi_label=False)
    assert single["labels"] == ["a", "b"]
    np.testing.assert_allclose(single["scores"], [np.e**2 / (np.e**2 + 1), 1 / (np.e**2 + 1)], rtol=1e-6)
    multi = zero_shot_scores("s", logits, ["a", "b"], 2, multi_label=True)
    np.testing.assert_allclose(multi["scores"], [np.e**2 / (np.e**2 + 1), 0.5], rtol=1e-6)
    assert entailment_id({0: "Contradiction", 1: "Entailment"}) == 1
    with pytest.raises(ValueError, match="entailment label"):
        entailment_id({0: "LABEL_0", 1: "LABEL_1"})


@pytest.mark.parametrize("params,field", [
    ({}, "candidate_labels"),
    ({"candidate_labels": []}, "candidate_labels"),
    ({"candidate_labels": ["a", ""]}, "candidate_labels[1]"),
    ({"candidate_labels": ["a", 3]}, "candidate_labels[1]"),
    ({"candidate_labels": ["a", "a"]}, "candidate_labels"),
    ({"candidate_labels": ["a"], "hypothesis_template": "no slot"}, "hypothesis_template"),
    ({"candidate_labels": ["a"], "multi_label": "yes"}, "multi_label"),
    ({"candidate_labels": 5}, "candidate_labels"),
])
def test_bad_parameters(nli, params, field):
    p = pipeline("zero-shot-classification", model=nli())
    with pytest.raises(InputError) as e:
        p.run(["a text"], **params)
    assert e.value.field == field


@pytest.mark.parametrize("bad,field", [("", "inputs[0]"), ([], "inputs"), (["ok", 3], "inputs[1]"), (["  "], "inputs[0]")])
def test_bad_inputs(nli, bad, field):
    p = pipeline("zero-shot-classification", model=nli())
    with pytest.raises(InputError) as e:
        p(bad, ["a", "b"])
    assert e.value.field == field


def test_refuses_a_model_without_entailment(checkpoint):
    with pytest.raises(ValueError, match="entailment"):
        pipeline("zero-shot-classification", model=checkpoint("distilbert", "sequence-classification"))
    with pytest.raises(ValueError, match="head"):  # never a freshly initialised classifier
        pipeline("zero-shot-classification", model=checkpoint("distilbert", "question-answering"))
