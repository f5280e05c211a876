"""fill-mask, text-classification and token-classification against the transformers pipelines
on the same tiny checkpoints, plus the options and errors users meet."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as T

from conftest import CORPUS
from expect import assert_same
from distilkit import InputError, pipeline


# ---------------------------------------------------------------------- fill-mask

@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
def test_fill_mask_equals_transformers(checkpoint, family):
    path = checkpoint(family, "masked-lm", head_scale=5.0)
    ref = T.pipeline("fill-mask", model=str(path), tokenizer=str(path))
    ours = pipeline("fill-mask", model=path)
    m = ours.tokenizer.mask_token
    sentences = [f"Paris is the {m} of France.", f"Today is a {m} day!", f"My name is {m} and I live in Seattle."]
    assert_same(ours(sentences[0]), ref(sentences[0]))
    assert_same(ours(sentences, top_k=3), ref(sentences, top_k=3))
    assert_same(ours(sentences[:1]), ref(sentences[:1]))  # a one-element list unwraps, as the reference
    targets = ["paris", "day", "city"] if family != "roberta" else ["Ġparis", "Ġday", "Ġcity"]
    assert_same(ours(sentences[0], targets=targets, top_k=2), ref(sentences[0], targets=targets, top_k=2))


def test_fill_mask_several_masks(checkpoint):
    path = checkpoint("distilbert", "masked-lm", head_scale=5.0)
    ref = T.pipeline("fill-mask", model=str(path), tokenizer=str(path))
    ours = pipeline("fill-mask", model=path)
    text = "[MASK] is the capital of [MASK]."
    got, expected = ours(text, top_k=3), ref(text, top_k=3)
    assert len(got) == 2 and all(len(row) == 3 for row in got)
    for g_row, e_row in zip(got, expected):
        for g, e in zip(g_row, e_row):
            assert (g["token"], g["token_str"]) == (e["token"], e["token_str"])
            assert g["score"] == pytest.approx(e["score"], rel=1e-5)
            # the same sentence without the [CLS]/[SEP] the reference leaves in; the other mask stays
            if e["sequence"].startswith("[CLS] "):  # (a "##" piece in first place glues onto [CLS] there)
                assert g["sequence"] == e["sequence"].replace("[CLS] ", "").replace(" [SEP]", "")
            assert "[MASK]" in g["sequence"] and "[CLS]" not in g["sequence"] and "[SEP]" not in g["sequence"]


def test_fill_mask_top_k_order_and_sequence(checkpoint):
    ours = pipeline("fill-mask", model=checkpoint("bert", "masked-lm", head_scale=5.0))
    out = ours("Paris is the [MASK] of France.", top_k=10)
    scores = [p["score"] for p in out]
    assert scores == sorted(scores, reverse=True) and len(out) == 10
    for p in out:
        assert p["sequence"] == ours.tokenizer.decode(
            ours.tokenizer.encode(["Paris is the [MASK] of France."])[0].ids[:4] + [p["token"]]
            + ours.tokenizer.encode(["Paris is the [MASK] of France."])[0].ids[5:], skip_special_tokens=True)


@pytest.mark.parametrize("call,field", [
    (lambda p: p("no mask here"), "inputs[0]"),
    (lambda p: p(""), "inputs[0]"),
    (lambda p: p(["ok [MASK]", 3]), "inputs[1]"),
    (lambda p: p("a [MASK]", top_k=0), "top_k"),
    (lambda p: p("a [MASK]", targets=[5]), "targets"),
    (lambda p: p("a [MASK] " + "word " * 300), "inputs[0]"),
])
def test_fill_mask_errors(checkpoint, call, field):
    ours = pipeline("fill-mask", model=checkpoint("distilbert", "masked-lm"))
    with pytest.raises(InputError) as e:
        call(ours)
    assert e.value.field == field


def test_fill_mask_truncation_option(checkpoint):
    ours = pipeline("fill-mask", model=checkpoint("distilbert", "masked-lm"))
    assert len(ours("a [MASK] " + "word " * 300, truncation=True)) == 5


# ---------------------------------------------------------------------- text classification

@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
def test_text_classification_equals_transformers(checkpoint, family):
    path = checkpoint(family, "sequence-classification", head_scale=10.0)
    ref = T.pipeline("text-classification", model=str(path), tokenizer=str(path))
    ours = pipeline("text-classification", model=path)
    texts = CORPUS[:6]
    assert_same(ours(texts[0]), ref(texts[0]))  # legacy: [{label, score}]
    assert_same(ours(texts), ref(texts))
    assert_same(ours(texts[0], top_k=2), ref(texts[0], top_k=2))
    assert_same(ours(texts, top_k=None), ref(texts, top_k=None))
    for fn in ("sigmoid", "none"):
        assert_same(ours(texts, function_to_apply=fn, top_k=None), ref(texts, function_to_apply=fn, top_k=None))
    pair = {"text": "What is my name?", "text_pair": "My name is John."}
    assert_same(ours(pair), ref(pair))
    assert {r["label"] for r in ours(texts)} <= {"sadness", "joy", "anger"}


def test_text_classification_default_top_k_at_construction(checkpoint):
    path = checkpoint("distilbert", "sequence-classification", head_scale=10.0)
    ref = T.pipeline("text-classification", model=str(path), tokenizer=str(path), top_k=None)
    ours = pipeline("text-classification", model=path, top_k=None)
    assert_same(ours(CORPUS[0]), ref(CORPUS[0]))
    assert_same(ours(CORPUS[:3]), ref(CORPUS[:3]))


def test_text_classification_errors(checkpoint):
    ours = pipeline("text-classification", model=checkpoint("distilbert", "sequence-classification"))
    with pytest.raises(InputError, match="function_to_apply"):
        ours("hello", function_to_apply="softplus")
    with pytest.raises(InputError, match="truncation"):
        ours("word " * 300)
    assert len(ours("word " * 300, truncation=True)) == 1


# ---------------------------------------------------------------------- token classification

NER_TEXTS = [
    "Hugging Face Inc. is a company based in New York City.",
    "My name is John and I live in Seattle.",
    "Alice is sitting on the bench. Bob is sitting next to her.",
]


@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification_equals_transformers(checkpoint, family, strategy):
    path = checkpoint(family, "token-classification", head_scale=10.0)
    ref = T.pipeline("token-classification", model=str(path), tokenizer=str(path), aggregation_strategy=strategy)
    ours = pipeline("token-classification", model=path, aggregation_strategy=strategy)
    assert_same(ours(NER_TEXTS), ref(NER_TEXTS))
    assert_same(ours(NER_TEXTS[0], ignore_labels=[]), ref(NER_TEXTS[0], ignore_labels=[]))


def test_token_classification_long_text_through_windows(checkpoint):
    path = checkpoint("bert", "token-classification", head_scale=10.0)
    ours = pipeline("token-classification", model=path)
    long_text = " ".join(NER_TEXTS * 20)  # several hundred tokens, over the tiny model's 128
    n_tokens = len(ours.tokenizer.encode([long_text], add_special_tokens=False)[0].ids)
    assert n_tokens > 128
    tokens = ours(long_text, ignore_labels=[])
    assert [t["index"] for t in tokens] == list(range(1, n_tokens + 1))  # every token labelled once
    for t in tokens:
        assert long_text[t["start"]:t["end"]].lower().replace(" ", "") != ""
    grouped = ours(long_text, aggregation_strategy="simple", ignore_labels=[])
    assert grouped[-1]["end"] == len(long_text) - 1 or grouped[-1]["end"] == len(long_text)
    assert all(a["start"] < b["start"] for a, b in zip(grouped, grouped[1:]))


def test_token_classification_errors(checkpoint):
    ours = pipeline("token-classification", model=checkpoint("distilbert", "token-classification"))
    with pytest.raises(InputError) as e:
        ours("hello", aggregation_strategy="loudest")
    assert e.value.field == "aggregation_strategy"
    with pytest.raises(InputError):
        ours(["fine", ""])


def test_wrong_head_is_a_clear_error(checkpoint):
    with pytest.raises(ValueError, match="question-answering"):
        from distilkit.checkpoint import load_model
        from distilkit.runtime import Runtime
        from distilkit.tasks.question_answering import QuestionAnswering
        from distilkit.tokenizer import Tokenizer

        path = checkpoint("distilbert", "masked-lm")
        QuestionAnswering(Runtime(load_model(path)), Tokenizer.from_pretrained(path))


def test_model_directory_without_tokenizer_files(checkpoint, tmp_path):
    src = checkpoint("distilbert", "question-answering")
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((src / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no tokenizer: expected tokenizer.json, vocab.txt"):
        pipeline("question-answering", model=tmp_path)
