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
    ids = ref.tokenizer(text)["input_ids"]
    masks = [i for i, t in enumerate(ids) if t == ref.tokenizer.mask_token_id]
    assert len(got) == len(expected) == len(masks) == 2 and all(len(row) == 3 for row in got)
    for mask, g_row, e_row in zip(masks, got, expected):
        for g, e in zip(g_row, e_row):
            assert (g["token"], g["token_str"]) == (e["token"], e["token_str"])
            assert g["score"] == pytest.approx(e["score"], rel=1e-5)
            # The reference leaves [CLS] and [SEP] in a several-mask sequence; ours is the same
            # sentence without them (the other mask stays), decoded by the reference's tokenizer.
            filled = ids[:mask] + [e["token"]] + ids[mask + 1:]
            assert g["sequence"] == ref.tokenizer.decode(filled[1:-1]), (g["sequence"], e["sequence"])


def test_fill_mask_top_ten_equals_transformers(checkpoint):
    path = checkpoint("bert", "masked-lm", head_scale=5.0)
    ref = T.pipeline("fill-mask", model=str(path), tokenizer=str(path))
    ours = pipeline("fill-mask", model=path)
    text = "Paris is the [MASK] of France."
    assert_same(ours(text, top_k=10), ref(text, top_k=10))


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
    path = checkpoint("distilbert", "masked-lm", head_scale=5.0)
    ref = T.pipeline("fill-mask", model=str(path), tokenizer=str(path))
    ours = pipeline("fill-mask", model=path)
    text = "a [MASK] " + "word " * 300
    assert_same(ours(text, truncation=True), ref(text, tokenizer_kwargs={"truncation": True}))


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
    # A sharp head: the tiny encoder's [CLS] state varies little between texts, and scores at 10x
    # differ in the fifth digit, too close to tell one cut from the next.
    path = checkpoint("distilbert", "sequence-classification", head_scale=100.0)
    ours = pipeline("text-classification", model=path)
    with pytest.raises(InputError, match="function_to_apply"):
        ours("hello", function_to_apply="softplus")
    with pytest.raises(InputError, match="truncation"):
        ours("word " * 300)
    ref = T.pipeline("text-classification", model=str(path), tokenizer=str(path))
    long_text = " ".join(CORPUS * 3)  # over 128 tokens: the cut decides the label
    kw = dict(truncation=True, top_k=None, function_to_apply="none")
    assert_same(ours(long_text, **kw), ref(long_text, **kw))


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


LONG_NER_TEXT = " ".join(NER_TEXTS * 12)  # several hundred tokens: windows of the tiny models' 128


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_token_classification_windows_and_stride_equal_transformers(checkpoint, family, strategy):
    """Over the limit, the reference labels the whole text only when given `stride`; ours cuts the
    same windows (a quarter window of overlap by default) and merges their entities alike."""
    path = checkpoint(family, "token-classification", head_scale=10.0)
    ref = T.pipeline("token-classification", model=str(path), tokenizer=str(path), aggregation_strategy=strategy)
    ours = pipeline("token-classification", model=path, aggregation_strategy=strategy)
    n_tokens = len(ours.tokenizer.encode([LONG_NER_TEXT], add_special_tokens=False)[0].ids)
    assert n_tokens > 3 * 128
    for stride in (8, 50):
        expected = ref(LONG_NER_TEXT, stride=stride, ignore_labels=[])
        assert_same(ours(LONG_NER_TEXT, stride=stride, ignore_labels=[]), expected)
        assert expected[-1]["end"] > len(LONG_NER_TEXT) - 10  # the last window was labelled too
    assert_same(ours(LONG_NER_TEXT), ref(LONG_NER_TEXT, stride=(128 - 2) // 4))


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_token_classification_labels_every_token_of_a_long_text(checkpoint, family):
    """Strategy "none" (where the reference takes no stride and labels only the first 126 tokens):
    side-by-side windows, each token labelled once by its own window, `index` counting across the
    whole text. The expected labels come from transformers' tokenizer and model, window by window."""
    import torch

    path = checkpoint(family, "token-classification", head_scale=10.0)
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModelForTokenClassification.from_pretrained(path).eval()
    enc = tok(LONG_NER_TEXT, truncation=True, max_length=128, stride=0, return_overflowing_tokens=True,
              return_offsets_mapping=True, return_special_tokens_mask=True)
    expected = []
    for ids, offsets, special in zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]):
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0].softmax(-1)
        for pos, (token, (start, end)) in enumerate(zip(ids, offsets)):
            if not special[pos]:
                label = int(probs[pos].argmax())
                expected.append({"entity": model.config.id2label[label], "score": float(probs[pos, label]),
                                 "index": len(expected) + 1, "word": tok.convert_ids_to_tokens(token),
                                 "start": start, "end": end})
    assert len(enc["input_ids"]) > 3
    ours = pipeline("token-classification", model=path)
    assert_same(ours(LONG_NER_TEXT, ignore_labels=[]), expected)
    assert_same(ours(LONG_NER_TEXT), [e for e in expected if e["entity"] != "O"])


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
