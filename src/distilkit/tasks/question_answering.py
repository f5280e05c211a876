"""question-answering: extractive spans, decoded exactly as the transformers 4.x QA pipeline does.

Each distinct context is tokenized once, however many questions ask about it; windows of
[CLS] question [SEP] context-slice [SEP] are cut from it with the same stride rule as the Rust
tokenizer. Span scoring (`window_candidates`) and answer merging (`merge_answers`) are pure
functions of arrays, tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..batching import Feature
from ..errors import InputError
from ..tokenizer import windows
from .base import Task


@dataclass
class QAParams:
    top_k: int = 1
    doc_stride: int | None = None  # default min(max_seq_len // 2, 128), as the reference
    max_answer_len: int = 15
    max_seq_len: int | None = None  # default min(model max length, 384)
    max_question_len: int = 64  # longer questions are cut to this many tokens
    handle_impossible_answer: bool = False
    align_to_words: bool = True

    def __post_init__(self):
        for name in ("top_k", "max_answer_len", "max_question_len"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}", name)
        if self.max_seq_len is not None and self.max_seq_len < 8:
            raise InputError(f"max_seq_len must be at least 8, got {self.max_seq_len}", "max_seq_len")
        if self.doc_stride is not None and self.doc_stride < 0:
            raise InputError(f"doc_stride must be >= 0, got {self.doc_stride}", "doc_stride")


@dataclass
class Window(Feature):
    """One [CLS] q [SEP] c[a:b] [SEP] row. Context tokens sit at positions ctx_pos .. ctx_pos + (b - a)."""

    context: "Context | None" = None
    a: int = 0
    b: int = 0
    ctx_pos: int = 0
    allowed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (T,) may start/end an answer


@dataclass
class Context:
    text: str
    offsets: np.ndarray  # (N, 2) character spans into text
    word_ids: np.ndarray  # (N,) int


class QuestionAnswering(Task):
    name = "question-answering"
    head = "question-answering"
    Params = QAParams

    # ------------------------------------------------------------------ inputs
    def __call__(self, *args: Any, **kwargs: Any):
        question, context = kwargs.pop("question", None), kwargs.pop("context", None)
        if args and (question is not None or context is not None):
            raise InputError("pass either examples or question=/context=, not both", "examples")
        if len(args) == 2 and all(isinstance(a, str) for a in args):
            question, context = args
            args = ()
        if args:
            if len(args) != 1:
                raise InputError("pass one example or a list of examples", "examples")
            examples, _ = self.batch_of(args[0], (dict,), "examples")
        elif question is not None and context is not None:
            if isinstance(question, list) and isinstance(context, str):
                examples = [{"question": q, "context": context} for q in question]
            elif isinstance(question, list) and isinstance(context, list):
                if len(question) != len(context):
                    raise InputError("Questions and contexts don't have the same lengths", "question")
                examples = [{"question": q, "context": c} for q, c in zip(question, context)]
            elif isinstance(question, str) and isinstance(context, str):
                examples = [{"question": question, "context": context}]
            else:
                raise InputError("question and context must be strings or lists of strings", "question")
        else:
            raise InputError("question answering needs question= and context=", "question" if question is None else "context")
        results = self.run(examples, **kwargs)
        return results[0] if len(results) == 1 else results

    def featurize(self, inputs, p):
        questions, contexts = [], []
        for i, ex in enumerate(inputs):
            if not isinstance(ex, dict):
                raise InputError(f"examples[{i}] must be an object with question and context", f"examples[{i}]")
            self.check_keys(ex, ("question", "context"), f"examples[{i}]")
            for key in ("question", "context"):
                if key not in ex or ex[key] is None:
                    raise InputError(f"examples[{i}] has no {key}", key)
            questions.append(self.check_text(ex["question"], "question"))
            contexts.append(self.check_text(ex["context"], "context"))

        max_seq_len = p.max_seq_len or min(self.max_length, 384)
        if max_seq_len > self.max_length:
            raise InputError(f"max_seq_len ({max_seq_len}) is over the model's limit of {self.max_length}", "max_seq_len")
        doc_stride = p.doc_stride if p.doc_stride is not None else min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise InputError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})", "doc_stride")

        # Each distinct context (and question) is tokenized once.
        distinct = list(dict.fromkeys(contexts))
        ctx_index = {c: j for j, c in enumerate(distinct)}
        ctx_encs = self.tokenizer.encode(distinct, add_special_tokens=False)
        ctx_objs = [
            Context(c, np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2),
                    np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int64))
            for c, e in zip(distinct, ctx_encs)
        ]
        ctx_ids = [np.asarray(e.ids, dtype=np.int64) for e in ctx_encs]
        q_distinct = list(dict.fromkeys(questions))
        q_ids = {q: np.asarray(e.ids[: p.max_question_len], dtype=np.int64)
                 for q, e in zip(q_distinct, self.tokenizer.encode(q_distinct, add_special_tokens=False))}

        t = self.tokenizer.pair_template
        cls_id = self.tokenizer.cls_token_id
        with_types = self.model.cfg.type_vocab_size > 0
        features: list[Window] = []
        owners: list[int] = []
        for i, (q, c) in enumerate(zip(questions, contexts)):
            qi, j = q_ids[q], ctx_index[c]
            ci = ctx_ids[j]
            if len(ci) == 0:
                raise InputError(f"examples[{i}]: the context has no tokens", "context")
            room = max_seq_len - len(qi) - t.n_special
            if room < 1:
                raise InputError(
                    f"examples[{i}]: the question ({len(qi)} tokens) leaves no room for the context in "
                    f"max_seq_len={max_seq_len}; shorten it or lower max_question_len", "question")
            head = np.asarray(t.prefix + qi.tolist() + t.middle, dtype=np.int64)
            head_types = np.asarray(t.prefix_types + [t.type_a] * len(qi) + t.middle_types, dtype=np.int64)
            tail = np.asarray(t.suffix, dtype=np.int64)
            tail_types = np.asarray(t.suffix_types, dtype=np.int64)
            # The reference's tokenizer refuses a stride >= the window; we shrink it instead.
            for a, b in windows(len(ci), room, min(doc_stride, room - 1)):
                ids = np.concatenate([head, ci[a:b], tail])
                allowed = np.zeros(len(ids), dtype=bool)
                allowed[len(head): len(head) + b - a] = True
                if cls_id is not None:
                    allowed |= ids == cls_id  # [CLS] stays in the softmax: it carries the no-answer score
                types = np.concatenate([head_types, np.full(b - a, t.type_b, dtype=np.int64), tail_types]) if with_types else None
                features.append(Window(ids, types, context=ctx_objs[j], a=a, b=b, ctx_pos=len(head), allowed=allowed))
                owners.append(i)
        return features, owners

    # ------------------------------------------------------------------ outputs
    def decode(self, inputs, features, owners, outputs, p):
        per_example: list[list[tuple[Window, np.ndarray]]] = [[] for _ in inputs]
        for f, i, out in zip(features, owners, outputs):
            per_example[i].append((f, out))
        results = []
        pre_topk = p.top_k * 2 + 10 if p.align_to_words else p.top_k
        for rows in per_example:
            context = rows[0][0].context
            candidates: list[tuple[int, int, float]] = []
            min_null = 1_000_000.0
            for w, logits in rows:
                starts, ends, scores, null = window_candidates(logits[:, 0], logits[:, 1], w.allowed, pre_topk,
                                                               p.max_answer_len)
                min_null = min(min_null, null)
                for s, e, score in zip(starts, ends, scores):
                    candidates.append((*char_span(context, w, int(s), int(e), p.align_to_words), float(score)))
            results.append(merge_answers(context.text, candidates, p.top_k,
                                         min_null if p.handle_impossible_answer else None))
        return results


def window_candidates(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int, max_answer_len: int):
    """Best (start, end) token spans of one window, with the reference's scores.

    start, end: (T,) float32 logits; allowed: (T,) positions that may hold an answer (context and
    [CLS]). Returns starts, ends, scores (p_start * p_end) and the window's null score
    p_start[0] * p_end[0].
    """
    start = np.where(allowed, start, np.float32(-10000.0)).astype(np.float32)
    end = np.where(allowed, end, np.float32(-10000.0)).astype(np.float32)
    start = np.exp(start - start.max())
    start = start / start.sum()
    end = np.exp(end - end.max())
    end = end / end.sum()
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0  # position 0 ([CLS]) is never an answer span
    # (T, T) span scores with end >= start and end - start < max_answer_len.
    # (a max_answer_len past the window changes nothing, and numpy cannot take one past a C long)
    candidates = np.tril(np.triu(np.outer(start, end)), min(max_answer_len, len(start)) - 1)
    flat = candidates.ravel()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        idx = np.argpartition(-flat, top_k)[:top_k]
        order = idx[np.argsort(-flat[idx])]
    starts, ends = np.unravel_index(order, candidates.shape)
    ok = allowed.copy()
    ok[0] = True  # the reference's membership test always admits index 0 (its score is 0 anyway)
    keep = ok[starts] & ok[ends]
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[starts, ends], null


def char_span(context: Context, w: Window, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Character span in the context of window tokens s..e, widened to whole words if asked."""
    n = w.b - w.a

    def token(pos: int) -> int:  # window position -> context token index, -1 outside the context
        return pos - w.ctx_pos + w.a if 0 <= pos - w.ctx_pos < n else -1

    cs, ce = token(s), token(e)
    if align_to_words and cs >= 0 and ce >= 0 and context.word_ids[cs] >= 0 and context.word_ids[ce] >= 0:
        # The words' tokens inside this window (a word cut by the window edge keeps its part).
        words = context.word_ids[w.a: w.b]
        first = w.a + int(np.argmax(words == context.word_ids[cs]))
        last = w.b - 1 - int(np.argmax(words[::-1] == context.word_ids[ce]))
        return int(context.offsets[first, 0]), int(context.offsets[last, 1])
    # Special tokens ([CLS]) have the empty offset (0, 0), as in the reference's fallback.
    return (int(context.offsets[cs, 0]) if cs >= 0 else 0), (int(context.offsets[ce, 1]) if ce >= 0 else 0)


def merge_answers(text: str, candidates: list[tuple[int, int, float]], top_k: int, null_score: float | None):
    """Candidates (start, end, score) from all windows -> the pipeline's answer(s).

    The same text (case-insensitive) found twice adds up its scores; with `null_score` the empty
    answer competes too. One answer comes back as a dict, several as a list, as the reference does.
    """
    answers: list[dict] = []
    by_text: dict[str, dict] = {}
    for s, e, score in candidates:
        key = text[s:e].lower()
        if key in by_text:
            by_text[key]["score"] += score
        else:
            by_text[key] = {"score": score, "start": s, "end": e, "answer": text[s:e]}
            answers.append(by_text[key])
    if null_score is not None:
        answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
    return answers[0] if len(answers) == 1 else answers
