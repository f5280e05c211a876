"""`distilkit evaluate --model REF --task TASK --data PATH`: official metrics through the inference tasks.

Predictions come from the same task objects as `pipeline()` (no decoding of its own): SQuAD
v1.1/v2.0 scored as the official scripts (v2 with the null-score difference as na_prob),
entity-level P/R/F1 with seqeval semantics, accuracy and macro-F1, and fill-mask top-1/top-5
accuracy and pseudo-perplexity on masked tokens of a text set. A JSON report and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import MODES
from .metrics import classification_report, entity_scores, pseudo_perplexity, squad_v1, squad_v2, topk_accuracy
from .progress import MODES as PROGRESS_MODES
from .progress import progress as make_progress


# ---------------------------------------------------------------------- per task
CHUNK = 64  # records per model call while scoring: progress moves every chunk


def _in_chunks(run, items: Sequence[Any], progress=None) -> list[Any]:
    """run(chunk) -> one result per item, over chunks of CHUNK items, counting each on `progress`."""
    out: list[Any] = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start: start + CHUNK]
        out.extend(run(chunk))
        if progress is not None:
            progress.update(len(chunk))
    return out


def evaluate_text_classification(task, records: Sequence[dict], progress=None) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class scores of the task's top label (texts over the limit are cut)."""
    inputs = [{"text": r["text"], "text_pair": r["text_pair"]} if r.get("text_pair") else r["text"] for r in records]
    preds = [out["label"] for out in _in_chunks(lambda c: task.run(c, truncation=True), inputs, progress)]
    return classification_report([r["label"] for r in records], preds)


def word_tags(text_words: Sequence[str], entities: Sequence[dict]) -> list[str]:
    """Token-level pipeline output (aggregation "none", nothing ignored) on " ".join(words) ->
    one tag per word: the tag of the word's first piece (the piece that starts where the word does),
    "O" for a word that produced no piece."""
    starts, pos = {}, 0
    for i, w in enumerate(text_words):
        starts[pos] = i
        pos += len(w) + 1
    tags = ["O"] * len(text_words)
    seen = set()
    for e in entities:
        i = starts.get(e["start"])
        if i is not None and i not in seen:
            tags[i] = e["entity"]
            seen.add(i)
    return tags


def evaluate_token_classification(task, records: Sequence[dict], progress=None) -> dict[str, Any]:
    """Entity-level precision/recall/F1 (seqeval) of word tags read off the first piece of each word,
    plus word accuracy."""
    texts = [" ".join(r["tokens"]) for r in records]
    outputs = _in_chunks(lambda c: task.run(c, aggregation_strategy="none", ignore_labels=[]), texts, progress)
    gold = [list(r["tags"]) for r in records]
    pred = [word_tags(r["tokens"], out) for r, out in zip(records, outputs)]
    scores = entity_scores(gold, pred)
    n_words = sum(len(g) for g in gold)
    scores["accuracy"] = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / max(1, n_words)
    return scores


def qa_predictions(task, records: Sequence[dict], version_2: bool, progress=None,
                   **params: Any) -> tuple[dict[str, str], dict[str, float] | None]:
    """`_qa_chunk` over chunks of records (so that progress moves while scoring)."""
    preds: dict[str, str] = {}
    na_probs: dict[str, float] | None = {} if version_2 else None
    for start in range(0, len(records), CHUNK):
        chunk = records[start: start + CHUNK]
        p, na = _qa_chunk(task, chunk, version_2, **params)
        preds.update(p)
        if na_probs is not None:
            na_probs.update(na)
        if progress is not None:
            progress.update(len(chunk))
    return preds, na_probs


def _qa_chunk(task, records: Sequence[dict], version_2: bool, **params: Any) -> tuple[dict[str, str], dict[str, float] | None]:
    """Answers of the QA task and, for v2, na_prob = null score - best span score per question.

    The predictions are the pipeline's (handle_impossible_answer for v2: "" when the null score
    wins). The task's featurize/forward run once; decode runs a second time without the null
    answer to read the best span's score, and the null score is the decoder's own (the minimum
    over windows of p_start[CLS] * p_end[CLS]).
    """
    from .tasks.question_answering import window_candidates

    inputs = [{"question": r["question"], "context": r["context"]} for r in records]
    p = task.params(handle_impossible_answer=version_2, top_k=1, **params)
    features, owners = task.featurize(inputs, p)
    outputs = task.forward(features)
    answers = [_first(a) for a in task.decode(inputs, features, owners, outputs, p)]
    preds = {r["id"]: a["answer"] for r, a in zip(records, answers)}
    if not version_2:
        return preds, None
    spans = [_first(a) for a in task.decode(inputs, features, owners, outputs, task.params(
        handle_impossible_answer=False, top_k=1, **params))]
    null = [math.inf] * len(records)
    for f, i, out in zip(features, owners, outputs):
        null[i] = min(null[i], window_candidates(out[:, 0], out[:, 1], f.allowed, 1, p.max_answer_len)[3])
    na_probs = {r["id"]: float(n - s["score"]) for r, n, s in zip(records, null, spans)}
    return preds, na_probs


def _first(answer: Any) -> dict:
    if isinstance(answer, list):  # no candidate at all comes back as []
        return answer[0] if answer else {"answer": "", "score": 0.0, "start": 0, "end": 0}
    return answer


def unanswerable(record: dict) -> bool:
    return bool(record.get("is_impossible")) or not record["answers"]


def evaluate_question_answering(task, records: Sequence[dict], version_2: bool | None = None, progress=None,
                                **params: Any) -> dict[str, Any]:
    """SQuAD v1.1 (exact_match, f1) or v2.0 (exact, f1, HasAns_*, NoAns_*, best_* and thresholds)
    scores of the task's answers. version_2=None: v2 when any question is unanswerable.
    v1.1 scores answerable questions only (as the v1.1 recipe trains and scores): unanswerable
    ones are left out, and the count left out is in the result (`unanswerable_left_out`)."""
    if version_2 is None:
        version_2 = any(unanswerable(r) for r in records)
    params = {k: v for k, v in params.items() if v is not None}
    left_out = 0
    if not version_2:
        answerable = [r for r in records if not unanswerable(r)]
        left_out = len(records) - len(answerable)
        if left_out and not answerable:
            raise ValueError(f"SQuAD v1.1 scoring: none of the {len(records)} questions has an answer "
                             "(score this data as version 2)")
        records = answerable
        if progress is not None and progress.total is not None:
            progress.set_total(progress.total - left_out)
    preds, na_probs = qa_predictions(task, records, version_2, progress, **params)
    if version_2:
        return squad_v2(records, preds, na_probs)
    metrics = {**squad_v1(records, preds), "total": len(records)}
    if left_out:
        metrics["unanswerable_left_out"] = left_out
    return metrics


def evaluate_fill_mask(task, texts: Sequence[str], mask_fraction: float = 0.15, max_seq_len: int = 128,
                       seed: int = 0, chunk: int = 256, progress=None) -> dict[str, Any]:
    """Top-1/top-5 accuracy and pseudo-perplexity on masked tokens.

    Each text is cut to max_seq_len tokens; a fraction of its tokens (all of them with
    mask_fraction=1: the full pseudo-log-likelihood) is masked, one token per copy of the text, and
    the task's forward gives the distribution at the mask (Salazar et al., 2020).
    """
    tok = task.tokenizer
    mask_id = tok.mask_token_id
    if mask_id is None:
        raise ValueError("this tokenizer has no mask token")
    with_types = task.model.cfg.type_vocab_size > 0
    rng = np.random.default_rng(seed)
    from .batching import Feature

    rows: list[tuple[np.ndarray, int, int]] = []  # (ids, position, target)
    limit = min(max_seq_len, task.max_length)
    n_texts = 0
    for enc in tok.encode(list(texts)):
        ids = np.asarray(enc.ids, dtype=np.int64)
        special = np.asarray(enc.special_tokens_mask, dtype=bool)
        if len(ids) > limit:
            keep = np.r_[0: limit - 1, len(ids) - 1]
            ids, special = ids[keep], special[keep]
        candidates = np.flatnonzero(~special)
        if len(candidates) == 0 or (ids == mask_id).any():
            continue
        n_texts += 1
        k = len(candidates) if mask_fraction >= 1 else max(1, round(mask_fraction * len(candidates)))
        for pos in np.sort(rng.choice(candidates, size=k, replace=False)):
            rows.append((ids, int(pos), int(ids[pos])))
    if not rows:
        raise ValueError("no tokens to mask in the given texts")
    targets, ranked, nll = [], [], []
    if progress is not None:
        progress.set_total(len(rows))
    for start in range(0, len(rows), chunk):
        part = rows[start: start + chunk]
        features = []
        for ids, pos, _ in part:
            masked = ids.copy()
            masked[pos] = mask_id
            features.append(Feature(masked, np.zeros_like(masked) if with_types else None))
        logits = np.stack([out[0] for out in task.forward(features)]).astype(np.float64)  # (N, V)
        log_probs = logits - logits.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        t = np.asarray([target for _, _, target in part])
        nll.extend((-log_probs[np.arange(len(part)), t]).tolist())
        top = np.argpartition(-logits, 5, axis=1)[:, :5]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1), axis=1)
        ranked.extend(top.tolist())
        targets.extend(t.tolist())
        if progress is not None:
            progress.update(len(part))
    return {"top1_accuracy": topk_accuracy(targets, ranked, 1), "top5_accuracy": topk_accuracy(targets, ranked, 5),
            "pseudo_perplexity": pseudo_perplexity(nll), "masked_tokens": len(targets), "texts": n_texts}


# ---------------------------------------------------------------------- one entry point
def evaluate(model: Any, task: str, data: str | Path, *, format: str = "auto", columns: dict[str, str] | None = None,
             select: str | None = None, limit: int | None = None, mode: str = "fp32", version: str = "auto",
             max_seq_len: int | None = None, doc_stride: int | None = None, max_answer_len: int | None = None,
             max_question_len: int | None = None, mask_fraction: float = 0.15, seed: int = 0,
             tokenizer: Any = None, progress: str | None = None) -> dict[str, Any]:
    """Score `model` (directory, hub id or loaded Model + tokenizer) on `data`; the JSON report.
    progress: a mode of distilkit.progress (None: a bar on a terminal, plain lines in a log)."""
    from .data.readers import read_records, read_texts
    from .pipelines import ALIASES, pipeline

    task = ALIASES.get(task, task)
    started = time.perf_counter()
    pipe = pipeline(task, model=model, tokenizer=tokenizer, mode=mode)
    if task == "sentence-embedding":  # retrieval of each SQuAD question's own context (metrics/retrieval.py)
        from .metrics.retrieval import evaluate_sentence_embedding

        records = read_records("question-answering", data, format, columns, select)[:limit]
        if not records:
            raise ValueError(f"no records in {data}")
        metrics, n = evaluate_sentence_embedding(pipe, records), len(records)
    elif task == "fill-mask":
        texts = read_texts(data, (columns or {}).get("text", "text"), select)[:limit]
        with make_progress(total=None, desc="evaluate", unit="masked tokens", mode=progress) as bar:
            metrics = evaluate_fill_mask(pipe, texts, mask_fraction, max_seq_len or 128, seed, progress=bar)
            bar.summary(f"pseudo_perplexity {metrics['pseudo_perplexity']:.4g}")
        n = len(texts)
    else:
        records = read_records(task, data, format, columns, select)[:limit]
        if not records:
            raise ValueError(f"no records in {data}")
        n = len(records)
        unit = {"text-classification": "texts", "token-classification": "sentences"}.get(task, "questions")
        with make_progress(total=n, desc="evaluate", unit=unit, mode=progress) as bar:
            if task == "text-classification":
                metrics = evaluate_text_classification(pipe, records, bar)
            elif task == "token-classification":
                metrics = evaluate_token_classification(pipe, records, bar)
            else:
                v2 = None if version == "auto" else version == "2"
                metrics = evaluate_question_answering(pipe, records, v2, bar, max_seq_len=max_seq_len,
                                                      doc_stride=doc_stride, max_answer_len=max_answer_len,
                                                      max_question_len=max_question_len)
                if metrics.get("unanswerable_left_out"):
                    bar.write(f"SQuAD v1.1 scoring: {metrics['unanswerable_left_out']} unanswerable of {n} questions "
                              f"left out; scored the {metrics['total']} answerable ones (as the v1.1 recipe does)")
            headline = next((k for k in ("f1", "accuracy") if k in metrics), None)
            bar.summary(f"{headline} {metrics[headline]:.4f}" if headline else "")
    return {"task": task, "model": str(model) if not hasattr(model, "cfg") else "<in-memory model>", "data": str(data),
            "examples": n, "mode": mode, "seconds": round(time.perf_counter() - started, 2), "metrics": metrics}


def format_table(report: dict[str, Any]) -> str:
    """The report as aligned text: the headline numbers, then per-class / per-type rows."""
    metrics = report["metrics"]
    lines = [f"{report.get('task', '')}  model={report.get('model', '')}  data={report.get('data', '')}"]
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    width = max((len(k) for k, _ in scalars), default=10)
    for k, v in scalars:
        lines.append(f"  {k:<{width}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    for key in ("per_type", "per_class"):
        table = metrics.get(key)
        if not table:
            continue
        name_w = max(len(str(n)) for n in table) + 2
        lines.append(f"  {'':<{name_w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for name, row in table.items():
            lines.append(f"  {str(name):<{name_w}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                         f"{row['support']:>10}")
    return "\n".join(lines)


def _columns(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    if text.lstrip().startswith("{"):
        return json.loads(text)
    return dict(part.split("=", 1) for part in text.split(",") if part)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="distilkit evaluate",
        description="Score a model with the official metrics: SQuAD v1.1/v2.0 EM/F1 (question-answering), "
                    "entity F1 (token-classification), accuracy/macro-F1 (text-classification), top-k accuracy and "
                    "pseudo-perplexity (fill-mask), recall@1/5/10 and MRR@10 of each SQuAD question's own context "
                    "(sentence-embedding).")
    parser.add_argument("--model", required=True, help="local directory or hub id")
    parser.add_argument("--task", required=True,
                        choices=["question-answering", "token-classification", "text-classification", "fill-mask",
                                 "sentence-embedding", "qa", "ner", "sentiment-analysis", "text-embedding"])
    parser.add_argument("--data", required=True, help="SQuAD JSON, CoNLL file, text;label file, JSONL/CSV, "
                                                      "or dataset:split with --format hf")
    parser.add_argument("--format", default="auto", help="auto | text-label | conll | squad | jsonl | csv | hf")
    parser.add_argument("--columns", help="field=column pairs (text=review,label=sentiment) or a JSON object")
    parser.add_argument("--range", dest="select", help="'a:b': articles for SQuAD JSON, records/texts otherwise")
    parser.add_argument("--limit", type=int, help="score only the first N records")
    parser.add_argument("--version", choices=["auto", "1", "2"], default="auto", help="SQuAD version (auto: 2 when "
                        "the data has unanswerable questions)")
    parser.add_argument("--max-seq-len", type=int)
    parser.add_argument("--doc-stride", type=int)
    parser.add_argument("--max-answer-len", type=int)
    parser.add_argument("--max-question-len", type=int)
    parser.add_argument("--mask-fraction", type=float, default=0.15, help="fill-mask: share of tokens masked (1: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="fp32", choices=MODES)
    parser.add_argument("--output", help="write the JSON report here (default: stdout)")
    parser.add_argument("--progress", choices=PROGRESS_MODES, help="auto (default): a bar on a terminal, plain "
                        "lines in a log; none: only the summary")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from .data.readers import DataError
    from .hub import CheckpointError, ModelNotFoundError  # not .checkpoint: it imports torch

    try:
        report = evaluate(args.model, args.task, args.data, format=args.format, columns=_columns(args.columns),
                          select=args.select, limit=args.limit, mode=args.mode, version=args.version,
                          max_seq_len=args.max_seq_len, doc_stride=args.doc_stride, max_answer_len=args.max_answer_len,
                          max_question_len=args.max_question_len, mask_fraction=args.mask_fraction, seed=args.seed,
                          progress=args.progress)
    except (DataError, ModelNotFoundError, CheckpointError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"distilkit evaluate: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    print(format_table(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
