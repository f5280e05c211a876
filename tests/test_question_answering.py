"""question-answering: equal to the transformers 4.x pipeline on the same checkpoint, and
table-driven decoding with hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as T

from conftest import CORPUS
from distilkit import InputError, pipeline

CONTEXT = " ".join(CORPUS)
QUESTIONS = ["What is my name?", "Where do I live?", "Who is the CEO?", "What is the capital of France?"]
OPTIONS = [
    {},
    {"top_k": 3},
    {"max_seq_len": 40, "doc_stride": 10},  # many windows
    {"handle_impossible_answer": True, "top_k": 2},
    {"top_k": 5, "max_seq_len": 32, "doc_stride": 8, "align_to_words": False},
    {"max_answer_len": 3, "top_k": 4},
]


def _as_list(r):
    return r if isinstance(r, list) else [r]


@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])
def test_equal_to_the_transformers_pipeline(checkpoint, family):
    path = checkpoint(family, "question-answering", head_scale=20.0)
    ref = T.pipeline("question-answering", model=str(path), tokenizer=str(path))
    ours = pipeline("question-answering", model=path)
    for kw in OPTIONS:
        for q in QUESTIONS:
            expected, got = _as_list(ref(question=q, context=CONTEXT, **kw)), _as_list(ours(question=q, context=CONTEXT, **kw))
            assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected], (q, kw)
            np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in expected], rtol=1e-5, atol=1e-7)
            assert all(CONTEXT[a["start"]:a["end"]] == a["answer"] for a in got)
    # Batched: many questions in one call, mixed contexts; the same answers in input order.
    examples = [{"question": q, "context": c} for q in QUESTIONS for c in (CONTEXT, CORPUS[0], CORPUS[6])]
    batched, alone = ours(examples), [ours(**e) for e in examples]
    spans = lambda rs: [(r["answer"], r["start"], r["end"]) for r in rs]  # noqa: E731
    assert spans(batched) == spans(alone) == spans(ref(examples))
    np.testing.assert_allclose([r["score"] for r in batched], [r["score"] for r in alone], rtol=1e-5)


def test_input_shapes(checkpoint):
    qa = pipeline("question-answering", model=checkpoint("distilbert", "question-answering"))
    one = qa(question="Where do I live?", context=CORPUS[0])
    assert set(one) == {"score", "start", "end", "answer"} and isinstance(one["score"], float)
    assert qa({"question": "Where do I live?", "context": CORPUS[0]}) == one
    assert qa("Where do I live?", CORPUS[0]) == one
    assert qa([{"question": "Where do I live?", "context": CORPUS[0]}]) == one  # a one-element list unwraps
    many = qa(question=["Where do I live?", "Who?"], context=CORPUS[0])
    assert isinstance(many, list) and len(many) == 2 and many[0] == one
    assert len(qa(question=["a?", "b?"], context=[CORPUS[0], CORPUS[1]])) == 2


@pytest.mark.parametrize("call,field", [
    (lambda qa: qa(question="", context="x y"), "question"),
    (lambda qa: qa(question="who?", context="   "), "context"),
    (lambda qa: qa({"question": "who?"}), "context"),
    (lambda qa: qa(question=["a?", "b?"], context=["x"]), "question"),
    (lambda qa: qa(question="who " * 200, context="x y", max_question_len=300), "question"),
    (lambda qa: qa(question="who?", context="x y", top_k=0), "top_k"),
    (lambda qa: qa(question="who?", context="x y", doc_stride=999), "doc_stride"),
    (lambda qa: qa(question="who?", context="x y", max_seq_len=4096), "max_seq_len"),
    (lambda qa: qa(question="who?", context="x y", topk=3), "topk"),
    (lambda qa: qa(question="who?", context="x y", top_k="3"), "top_k"),
])
def test_bad_input_names_the_field(checkpoint, call, field):
    qa = pipeline("question-answering", model=checkpoint("distilbert", "question-answering"))
    with pytest.raises(InputError) as e:
        call(qa)
    assert e.value.field == field, str(e.value)


# ---------------------------------------------------------------------- hand-made logits

class Scripted:
    """Replaces the model: start/end logits chosen per token text, everything else 0."""

    def __init__(self, qa, start: dict[str, float], end: dict[str, float], cls: tuple[float, float] = (0.0, 0.0)):
        self.qa, self.start, self.end, self.cls = qa, start, end, cls

    def forward(self, batch, positions=None):
        ids = batch["input_ids"]
        out = np.zeros(ids.shape + (2,), dtype=np.float32)
        for (r, t), i in np.ndenumerate(ids):
            tok = self.qa.tokenizer.id_to_token(i)
            out[r, t, 0] = self.start.get(tok, 0.0)
            out[r, t, 1] = self.end.get(tok, 0.0)
        out[:, 0] = self.cls
        return out


@pytest.fixture
def qa(checkpoint):
    task = pipeline("question-answering", model=checkpoint("bert", "question-answering"))
    yield task


def script(qa, **kw):
    qa.runtime = Scripted(qa, **kw)
    return qa


def test_answer_in_the_second_window(qa):
    context = "Paris is the capital of France. " * 6 + "My name is John and I live in Seattle."
    script(qa, start={"seattle": 8.0}, end={"seattle": 8.0})
    out = qa(question="Where do I live?", context=context, max_seq_len=32, doc_stride=6)
    assert out["answer"] == "Seattle" and context[out["start"]:out["end"]] == "Seattle"
    assert out["start"] == context.index("Seattle")


def test_max_answer_len_cuts_long_spans(qa):
    context = "Alice is sitting on the bench. Bob is sitting next to her."
    script(qa, start={"alice": 9.0, "bob": 8.0}, end={"her": 9.0, "bob": 8.0})  # e^18 long > e^16 bob > e^9 rest
    assert qa(question="Who?", context=context, max_answer_len=30)["answer"] == context[:-1]  # the long span wins
    assert qa(question="Who?", context=context, max_answer_len=3)["answer"] == "Bob"  # too long: cut


def test_impossible_answer(qa):
    script(qa, start={"john": 2.0}, end={"john": 2.0}, cls=(9.0, 9.0))
    context = "My name is John."
    best = qa(question="Who?", context=context, handle_impossible_answer=True)
    assert best["answer"] == "" and best["start"] == best["end"] == 0
    # Its score is p_start[CLS] * p_end[CLS] over the context tokens and [CLS].
    n_ctx = len(qa.tokenizer.encode([context], add_special_tokens=False)[0].ids)
    p_cls = np.exp(9.0) / (np.exp(9.0) + np.exp(2.0) + (n_ctx - 1))
    assert best["score"] == pytest.approx(p_cls * p_cls, rel=1e-5)
    assert qa(question="Who?", context=context)["answer"] == "John"  # without the option, never empty


def test_top_k_merges_duplicate_texts(qa):
    context = "Seattle is rainy. I live in seattle. John likes Paris."
    script(qa, start={"seattle": 5.0, "paris": 4.0}, end={"seattle": 5.0, "paris": 4.0})
    answers = qa(question="Where?", context=context, top_k=3, max_answer_len=1)
    texts = [a["answer"].lower() for a in answers]
    assert texts[0] == "seattle" and texts.count("seattle") == 1 and "paris" in texts
    # the merged score is the sum of both occurrences' p_start * p_end
    assert answers[0]["score"] > 2 * answers[texts.index("paris")]["score"]
    assert answers == sorted(answers, key=lambda a: -a["score"])


@pytest.mark.parametrize("context", [
    "Café crème and naïve résumé: the answer is Zoë Saldaña in São Paulo.",
    "東京 is in Japan and 北京 is in China; 東京タワー is tall.",
    "The party 🎉 was fun 😀😀 and John   came   with\tBob\n\nlater.",
    "  leading and trailing   whitespace   runs  ",
])
def test_offsets_index_the_callers_string(qa, context):
    rng = np.random.default_rng(0)
    vocab = [qa.tokenizer.id_to_token(i) for i in range(qa.tokenizer.vocab_size)]
    script(qa, start={t: float(x) for t, x in zip(vocab, rng.normal(0, 3, len(vocab)))},
           end={t: float(x) for t, x in zip(vocab, rng.normal(0, 3, len(vocab)))})
    for align in (True, False):
        answers = qa(question="What?", context=context, top_k=20, align_to_words=align, max_seq_len=24, doc_stride=4)
        assert answers
        for a in _as_list(answers):
            assert context[a["start"]:a["end"]] == a["answer"]


def test_many_questions_tokenize_each_context_once(qa, monkeypatch):
    calls = []
    real = qa.tokenizer.encode
    monkeypatch.setattr(qa.tokenizer, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    qa(question=[f"question {i}?" for i in range(50)], context=CONTEXT)
    contexts_encoded = [t for batch in calls for t in batch if t == CONTEXT]
    assert len(contexts_encoded) == 1
