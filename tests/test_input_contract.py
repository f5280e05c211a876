"""The one input contract of every task: a text (or the task's object), or a list of them; anything
else is an InputError naming the field. Text pairs under truncation=True are cut as transformers
cuts them. A property-based test feeds each task arbitrary JSON-like inputs and options."""

from __future__ import annotations

import json
import math

import pytest
import transformers as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilkit import InputError, pipeline

TASKS = {"fill-mask": "masked-lm", "question-answering": "question-answering",
         "text-classification": "sequence-classification", "token-classification": "token-classification"}


@pytest.fixture(scope="module")
def tasks(checkpoint):
    return {task: pipeline(task, model=checkpoint("distilbert", head, head_scale=5.0)) for task, head in TASKS.items()}


# ---------------------------------------------------------------------- what is refused, and the field named

NOT_TEXT = [None, 3, 2.5, True, b"bytes"]
BAD = {
    "fill-mask": [(x, "inputs") for x in NOT_TEXT] + [
        ({"text": "a [MASK]"}, "inputs"), ([["a [MASK]"]], "inputs[0]"), ([{"text": "a [MASK]"}], "inputs[0]"), (["a [MASK]", None], "inputs[1]"),
        ("", "inputs[0]"), ("   ", "inputs[0]"),
    ],
    "text-classification": [(x, "inputs") for x in NOT_TEXT] + [
        ({}, "inputs[0].text"), ({"text_pair": "b"}, "inputs[0].text"), ({"text": None}, "inputs[0].text"),
        ({"text": 3}, "inputs[0].text"), ({"text": ["a"]}, "inputs[0].text"),
        ({"text": "a", "text_pair": 3}, "inputs[0].text_pair"), ({"text": "a", "text_pair": ""}, "inputs[0].text_pair"),
        ({"text": "a", "textpair": "b"}, "inputs[0].textpair"),  # a typo must not score the text alone
        ([["a", "b"]], "inputs[0]"), (["a", {"text": "b", "x": 1}], "inputs[1].x"), ("", "inputs[0]"),
    ],
    "token-classification": [(x, "inputs") for x in NOT_TEXT] + [
        ({"text": "John"}, "inputs"), ({}, "inputs"), ([{}], "inputs[0]"), ([["John"]], "inputs[0]"), (["John", 3], "inputs[1]"),
        ("", "inputs[0]"),
    ],
}
QA_BAD = [
    ((None,), {}, "examples"), ((3,), {}, "examples"), (("Who?",), {}, "examples"), (([["Who?", "ctx"]],), {}, "examples[0]"),
    (({},), {}, "question"), (({"question": "Who?"},), {}, "context"), (({"question": 3, "context": "c"},), {}, "question"),
    (({"question": "Who?", "context": None},), {}, "context"),
    (({"question": "Who?", "context": "John", "id": 1},), {}, "examples[0].id"),
    ((), {"question": None, "context": "John"}, "question"), ((), {"question": "Who?", "context": 3}, "question"),
    ((), {"question": ["Who?", "Where?"], "context": ["John"]}, "question"),
    ((), {"question": "Who?", "context": ""}, "context"),
]


@pytest.mark.parametrize("task,inputs,field", [(t, x, f) for t, rows in BAD.items() for x, f in rows])
def test_bad_input_is_an_input_error_naming_the_field(tasks, task, inputs, field):
    with pytest.raises(InputError) as e:
        tasks[task](inputs)
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("args,kwargs,field", QA_BAD)
def test_bad_qa_input_is_an_input_error_naming_the_field(tasks, args, kwargs, field):
    with pytest.raises(InputError) as e:
        tasks["question-answering"](*args, **kwargs)
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("inputs", ["a text", {"text": "a"}, 7])
def test_run_takes_a_list(tasks, task, inputs):
    """`run` (the server's and batch job's way in) never iterates a string's characters or a dict's keys."""
    with pytest.raises(InputError) as e:
        tasks[task].run(inputs)
    assert e.value.field == "inputs"


HUGE = 10**30  # past a C long: found by the property test below in max_answer_len


@pytest.mark.parametrize("task,inputs,params", [
    ("question-answering", {"question": "Who?", "context": "John lives here."}, {"max_answer_len": HUGE}),
    ("question-answering", {"question": "Who?", "context": "John lives here."}, {"top_k": HUGE}),
    ("question-answering", {"question": "Who?", "context": "John lives here."}, {"max_question_len": HUGE}),
    ("fill-mask", "Paris is the [MASK] of France.", {"top_k": HUGE}),
    ("text-classification", "Paris", {"top_k": HUGE}),
])
def test_huge_options_give_a_result(tasks, task, inputs, params):
    assert leaves(tasks[task](inputs, **params))


@pytest.mark.parametrize("task,inputs,params,field", [
    ("question-answering", {"question": "Who?", "context": "John lives here."}, {"doc_stride": HUGE}, "doc_stride"),
    ("question-answering", {"question": "Who?", "context": "John lives here."}, {"max_seq_len": HUGE}, "max_seq_len"),
    ("token-classification", "John " * 200, {"stride": HUGE, "aggregation_strategy": "simple"}, "stride"),
])
def test_huge_options_out_of_range_are_input_errors(tasks, task, inputs, params, field):
    with pytest.raises(InputError) as e:
        tasks[task](inputs, **params)
    assert e.value.field == field


# ---------------------------------------------------------------------- text pairs under truncation

LONG, SHORT = " ".join(["Paris is the capital of France and its largest city."] * 12), "My name is John."
PAIRS = [(LONG, SHORT), (SHORT, LONG), (LONG, LONG + " Bob"), ("a " * 70, "b " * 70), ("a " * 64, "b " * 63)]


@pytest.mark.parametrize("family", ["distilbert", "bert", "roberta"])  # WordPiece, and BPE for roberta
def test_pair_truncation_equals_transformers(checkpoint, family):
    path = checkpoint(family, "sequence-classification", head_scale=10.0)
    ref_tok = T.AutoTokenizer.from_pretrained(str(path))
    ours = pipeline("text-classification", model=path)
    for a, b in PAIRS:
        expected = ref_tok(a, b, truncation=True)
        got = ours.tokenizer.encode_pairs([(a, b)], max_length=ours.max_length)[0]
        assert len(expected["input_ids"]) == ours.max_length
        assert got.ids == expected["input_ids"]
        if "token_type_ids" in expected:
            assert got.type_ids == expected["token_type_ids"]
        assert got.sequence_ids.count(1) > 0  # the second text is there
    ref = T.pipeline("text-classification", model=str(path), tokenizer=str(path))
    for a, b in PAIRS[:2]:
        pair = {"text": a, "text_pair": b}
        want, got = ref(pair, truncation=True, top_k=None), ours(pair, truncation=True, top_k=None)
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], rel=1e-5, abs=1e-6)


def test_long_pair_without_truncation_is_refused(tasks):
    with pytest.raises(InputError, match="truncation") as e:
        tasks["text-classification"]({"text": LONG, "text_pair": SHORT})
    assert e.value.field == "inputs[0]"


# ---------------------------------------------------------------------- property: a result or an InputError

scalars = st.none() | st.booleans() | st.integers(-3, 10**6) | st.integers() | st.floats() | st.text(max_size=20)
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
words = st.sampled_from(["Paris", "John", "the", "capital", "[MASK]", "<mask>", "[SEP]", "[CLS]", "é", "東京", "😀",
                         "", " ", "\t", "\x00", "\u200b", "city.", "New", "York"])
texts = st.lists(words, max_size=12).map(" ".join) | st.text(max_size=60) | st.just("word [MASK] " * 100)
real = st.lists(st.sampled_from(["Paris", "John", "the", "capital", "of", "France", "city.", "New", "York", "東京", "é"]),
                min_size=1, max_size=10).map(" ".join)
masked = st.tuples(real, real, st.sampled_from([" [MASK] ", " [MASK] [MASK] "])).map(lambda t: t[0] + t[2] + t[1])
# Mostly texts a model can answer (so that results get checked too), else any text or anything.
value = st.one_of(real, real, texts, json_like)
# Each option: mostly values of its type (in range or not, huge ints included), sometimes anything.
OPTIONS = {
    "fill-mask": {"top_k": st.integers(1, 12) | st.integers(-1, 12), "targets": st.none() | words | st.lists(words, max_size=3),
                  "truncation": st.booleans()},
    "question-answering": {
        "top_k": st.integers(1, 12) | st.integers(-1, 12), "doc_stride": st.none() | st.integers(-1, 200),
        "max_answer_len": st.integers(1, 40) | st.integers(), "max_seq_len": st.none() | st.integers(0, 200),
        "max_question_len": st.integers(1, 80) | st.integers(), "handle_impossible_answer": st.booleans(),
        "align_to_words": st.booleans()},
    "text-classification": {"top_k": st.none() | st.integers(-1, 5) | st.integers(),
                            "function_to_apply": st.none() | st.sampled_from(["softmax", "sigmoid", "none", "NONE", "x"]),
                            "truncation": st.booleans()},
    "token-classification": {
        "aggregation_strategy": st.sampled_from(["none", "simple", "first", "average", "max", "MAX", "loudest"]),
        "ignore_labels": st.lists(st.sampled_from(["O", "B-PER", "I-LOC", "x"]), max_size=3),
        "stride": st.none() | st.integers(-1, 200) | st.integers()},
}


def options(task: str):
    typed = st.fixed_dictionaries({}, optional=OPTIONS[task])
    anything = st.dictionaries(st.sampled_from([*OPTIONS[task], "bogus"]), json_like, max_size=2)
    return st.one_of(typed, typed, typed, anything)


ONE_INPUT = {
    "fill-mask": st.one_of(masked, masked, value),
    "text-classification": value | st.fixed_dictionaries({"text": value}, optional={"text_pair": value}),
    "token-classification": value,
    "question-answering": st.fixed_dictionaries({"question": value, "context": value}) | json_like,
}
LEAF_KEYS = {
    "fill-mask": {"score": float, "token": int, "token_str": str, "sequence": str},
    "question-answering": {"score": float, "start": int, "end": int, "answer": str},
    "text-classification": {"label": str, "score": float},
    "token-classification": {"score": float, "word": str, "start": (int, type(None)), "end": (int, type(None))},
}


def leaves(result):
    """The result dicts at the bottom of a pipeline answer (lists nest per input and per mask)."""
    if isinstance(result, dict):
        return [result]
    assert isinstance(result, list), type(result)
    return [leaf for item in result for leaf in leaves(item)]


def check_result(task: str, result) -> None:
    json.dumps(result, allow_nan=False)  # plain JSON numbers, as the server and batch job write them
    for leaf in leaves(result):
        keys = LEAF_KEYS[task]
        assert set(keys) <= set(leaf), (set(keys), leaf)
        for key, kind in keys.items():
            assert isinstance(leaf[key], kind) and not isinstance(leaf[key], bool), (key, leaf)
        assert math.isfinite(leaf["score"])
        if task == "token-classification":
            assert isinstance(leaf.get("entity", leaf.get("entity_group")), str)
        if task == "fill-mask":
            assert 0.0 <= leaf["score"] <= 1.0 + 1e-6
        if task == "question-answering":  # (the same answer text from several windows adds its scores up)
            assert leaf["score"] >= 0.0 and 0 <= leaf["start"] <= leaf["end"]


def call(task, pipe, inputs, params):
    if task == "question-answering" and isinstance(inputs, tuple):
        return pipe(question=inputs[0], context=inputs[1], **params)
    return pipe(inputs, **params)


@pytest.mark.parametrize("task", list(TASKS))
def test_any_json_like_input_gives_a_result_or_an_input_error(tasks, task):
    one = ONE_INPUT[task]
    inputs = one | st.lists(one, max_size=3)
    if task == "question-answering":
        inputs = inputs | st.tuples(value | st.lists(value, max_size=2), value | st.lists(value, max_size=2))

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inputs=inputs, params=options(task))
    def check(inputs, params):
        try:
            result = call(task, tasks[task], inputs, params)
        except InputError as e:
            assert str(e)
            return
        check_result(task, result)

    check()
