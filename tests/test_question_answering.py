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


@pytest.fixture(scope="module")
def null_winning_checkpoint(checkpoint, tmp_path_factory):
    """A tiny QA checkpoint whose head leans towards [CLS]: with handle_impossible_answer the empty
    answer wins for some questions and loses for others (a random head never lets it win).
    Its start/end weights get a small push along [CLS]'s mean hidden state minus the other tokens'."""
    import torch

    src = checkpoint("bert", "question-answering", head_scale=20.0)
    model = T.AutoModelForQuestionAnswering.from_pretrained(src).eval()
    tok = T.AutoTokenizer.from_pretrained(src)
    enc = tok(QUESTIONS, [" ".join(CORPUS[:3])] * len(QUESTIONS), padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model.bert(**enc).last_hidden_state  # (B, T, dim)
        real = enc["attention_mask"][:, 1:].bool()
        towards_cls = h[:, 0].mean(0) - h[:, 1:][real].mean(0)
        model.qa_outputs.weight += 0.05 * towards_cls / towards_cls.norm()
    out = tmp_path_factory.mktemp("qa-null")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kw", [{}, {"top_k": 3}, {"max_seq_len": 40, "doc_stride": 10}, {"top_k": 2, "max_seq_len": 32}])
def test_the_empty_answer_wins_as_in_transformers(null_winning_checkpoint, kw):
    ref = T.pipeline("question-answering", model=str(null_winning_checkpoint), tokenizer=str(null_winning_checkpoint))
    ours = pipeline("question-answering", model=null_winning_checkpoint)
    best = []
    for q in QUESTIONS:
        for c in (CORPUS[0], " ".join(CORPUS[:3]), CORPUS[6]):
            expected = _as_list(ref(question=q, context=c, handle_impossible_answer=True, **kw))
            got = _as_list(ours(question=q, context=c, handle_impossible_answer=True, **kw))
            assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected], (q, c, kw)
            np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in expected], rtol=1e-5, atol=1e-7)
            best.append(expected[0]["answer"])
    assert "" in best and any(best), best  # the empty answer won some, lost others


def test_max_question_len_cuts_the_question(checkpoint):
    """Questions over max_question_len tokens are cut to their first max_question_len tokens: the
    answer equals the reference's for the cut question (the reference's fast tokenizer never cuts)."""
    path = checkpoint("distilbert", "question-answering", head_scale=20.0)
    ref = T.pipeline("question-answering", model=str(path), tokenizer=str(path))
    ours = pipeline("question-answering", model=path)
    words = "what is the name of the capital city paris".split()  # one token each
    assert all(len(ours.tokenizer.encode([w], add_special_tokens=False)[0].ids) == 1 for w in words)
    question = " ".join(words * 3)  # 27 tokens
    for cut in (5, 11, 27, 64):
        expected = ref(question=" ".join((words * 3)[:cut]), context=CONTEXT, top_k=3)
        got = ours(question=question, context=CONTEXT, top_k=3, max_question_len=cut)
        assert [(a["answer"], a["start"]) for a in got] == [(a["answer"], a["start"]) for a in expected], cut
        np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in expected], rtol=1e-5)
    cut_scores = [ours(question=question, context=CONTEXT, max_question_len=n)["score"] for n in (5, 11)]
    assert cut_scores[0] != pytest.approx(cut_scores[1], rel=1e-3)  # the cut changes what the model sees


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


def test_the_empty_answer_scores_its_least_likely_window(qa):
    """The null score is the smallest over the windows (the reference's min_null). Window 1 holds no
    "john": p[CLS] = e^5 / (e^5 + ~27) = 0.85, null 0.72. The last window holds it: p[CLS] =
    e^5 / (e^5 + e^6 + ~26) = 0.26, null 0.07, "John" 0.70^2 = 0.49. With the largest null the
    empty answer would win; with the smallest, John does."""
    context = "Paris is the capital of France. " * 6 + "My name is John."
    script(qa, start={"john": 6.0}, end={"john": 6.0}, cls=(5.0, 5.0))
    answers = qa(question="Who?", context=context, max_seq_len=32, doc_stride=6, top_k=2, handle_impossible_answer=True)
    assert [a["answer"] for a in answers] == ["John", ""]
    assert answers[0]["score"] == pytest.approx(0.49, abs=0.03) and answers[1]["score"] == pytest.approx(0.07, abs=0.02)


def test_top_k_merges_duplicate_texts(qa, checkpoint):
    context = "Seattle is rainy. I live in seattle. John likes Paris."
    script(qa, start={"seattle": 5.0, "paris": 4.0}, end={"seattle": 5.0, "paris": 4.0})
    answers = qa(question="Where?", context=context, top_k=3, max_answer_len=1)
    # One window; the softmax runs over [CLS] (logit 0) and the n context tokens (the reference's count).
    n = len(T.AutoTokenizer.from_pretrained(checkpoint("bert", "question-answering")).tokenize(context))
    z = 2 * np.exp(5.0) + np.exp(4.0) + (n - 3) + 1
    # (the two spans tie: either may name the merged answer)
    assert (answers[0]["start"], answers[0]["end"]) in {(0, 7), (28, 35)}
    assert answers[0]["answer"] == context[answers[0]["start"]:answers[0]["end"]]
    assert (answers[1]["answer"], answers[1]["start"], answers[1]["end"]) == ("Paris", 48, 53)
    # Both "seattle"s add up: 2 * p_start * p_end; every other one-token span scores (1/z)^2, the
    # third answer a text found (or widened to, by align_to_words) several times.
    np.testing.assert_allclose([a["score"] for a in answers[:2]], [2 * np.exp(10.0) / z**2, np.exp(8.0) / z**2],
                               rtol=1e-5)
    times = answers[2]["score"] * z**2
    assert times == pytest.approx(round(times), rel=1e-4) and round(times) >= 1


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("context", [
    "Café crème and naïve résumé: the answer is Zoë Saldaña in São Paulo.",
    "東京 is in Japan and 北京 is in China; 東京タワー is tall.",
    "The party 🎉 was fun 😀😀 and John   came   with\tBob\n\nlater.",
    "  leading and trailing   whitespace   runs  ",
])
def test_offsets_index_the_callers_string(checkpoint, family, context):
    """Spans over accents, CJK, emoji and whitespace runs, in small windows: the reference's
    answers, character offsets and scores, each answer the caller's own substring."""
    path = checkpoint(family, "question-answering", head_scale=20.0)
    ref = T.pipeline("question-answering", model=str(path), tokenizer=str(path))
    ours = pipeline("question-answering", model=path)
    for align in (True, False):
        kw = dict(top_k=20, align_to_words=align, max_seq_len=24, doc_stride=4)
        expected, got = ref(question="What?", context=context, **kw), ours(question="What?", context=context, **kw)
        assert [(a["answer"], a["start"], a["end"]) for a in got] == [(a["answer"], a["start"], a["end"]) for a in expected]
        np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in expected], rtol=1e-5, atol=1e-7)
        assert all(a["answer"] and context[a["start"]:a["end"]] == a["answer"] for a in got)


def test_many_questions_tokenize_each_context_once(qa, monkeypatch):
    calls = []
    real = qa.tokenizer.encode
    monkeypatch.setattr(qa.tokenizer, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    qa(question=[f"question {i}?" for i in range(50)], context=CONTEXT)
    contexts_encoded = [t for batch in calls for t in batch if t == CONTEXT]
    assert len(contexts_encoded) == 1
