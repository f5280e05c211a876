"""Records -> training features -> padded batches.

A feature is a dict of numpy arrays / ints: `input_ids` (T,), `token_type_ids` (T,) when the model
has token types, and the targets: `labels` (an int for classification, (T,) ids with -100 where no
loss is taken for NER) or `start_positions` / `end_positions` (QA). QA windows are cut as the QA
task cuts them at inference ([CLS] question [SEP] context-slice [SEP], `tokenizer.windows`), and
labelled as transformers' run_qa.py `prepare_train_features` does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..tokenizer import Tokenizer, windows

IGNORE_INDEX = -100  # positions without a loss (cross_entropy's ignore_index)


# ---------------------------------------------------------------------- text classification
def classification_features(tokenizer: Tokenizer, records: Sequence[dict], label2id: dict[str, int],
                            max_seq_len: int, with_types: bool) -> list[dict]:
    """One feature per record; texts over max_seq_len are cut, keeping the final [SEP]."""
    singles = [i for i, r in enumerate(records) if r.get("text_pair") is None]
    pairs = [i for i, r in enumerate(records) if r.get("text_pair") is not None]
    encs: dict = dict(zip(singles, tokenizer.encode([records[i]["text"] for i in singles])))
    encs.update(zip(pairs, tokenizer.encode_pairs([(records[i]["text"], records[i]["text_pair"]) for i in pairs])))
    features = []
    for i, rec in enumerate(records):
        if rec["label"] not in label2id:
            raise ValueError(f"record {i}: label {rec['label']!r} is not one of the labels {sorted(label2id)}")
        ids = np.asarray(encs[i].ids, dtype=np.int64)
        types = np.asarray(encs[i].type_ids, dtype=np.int64)
        if len(ids) > max_seq_len:
            keep = np.r_[0: max_seq_len - 1, len(ids) - 1]
            ids, types = ids[keep], types[keep]
        features.append({"input_ids": ids, "token_type_ids": types if with_types else None,
                         "labels": label2id[rec["label"]]})
    return features


# ---------------------------------------------------------------------- token classification
def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int], label_all_tokens: bool = False,
                 b_to_i: dict[int, int] | None = None) -> np.ndarray:
    """Word labels -> one label per word piece. (T,)

    Special tokens (word id None) get IGNORE_INDEX. The first piece of a word carries the word's
    label; the other pieces get IGNORE_INDEX, or with `label_all_tokens` the word's label too, a
    B- label turned into its I- label through `b_to_i` (as transformers' run_ner.py does).
    """
    out = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int64)
    previous = None
    for pos, w in enumerate(word_ids):
        if w is None:
            previous = None
            continue
        if w != previous:
            out[pos] = word_labels[w]
        elif label_all_tokens:
            label = word_labels[w]
            out[pos] = (b_to_i or {}).get(label, label)
        previous = w
    return out


def b_to_i_map(label2id: dict[str, int]) -> dict[int, int]:
    """Label id of B-X -> label id of I-X, for the labels that have both."""
    return {i: label2id["I-" + name[2:]] for name, i in label2id.items()
            if name.startswith("B-") and "I-" + name[2:] in label2id}


def ner_features(tokenizer: Tokenizer, records: Sequence[dict], label2id: dict[str, int], max_seq_len: int,
                 with_types: bool, label_all_tokens: bool = False) -> list[dict]:
    """One feature per sentence of words; sentences over max_seq_len pieces are cut (their tail
    gets no loss)."""
    encs = tokenizer.rust.encode_batch([list(r["tokens"]) for r in records], is_pretokenized=True,
                                       add_special_tokens=True)
    b_to_i = b_to_i_map(label2id)
    features = []
    for i, (rec, enc) in enumerate(zip(records, encs)):
        unknown = sorted({t for t in rec["tags"] if t not in label2id})
        if unknown:
            raise ValueError(f"record {i}: tags {unknown} are not among the labels {sorted(label2id)}")
        ids = np.asarray(enc.ids, dtype=np.int64)
        labels = align_labels(enc.word_ids, [label2id[t] for t in rec["tags"]], label_all_tokens, b_to_i)
        if len(ids) > max_seq_len:
            keep = np.r_[0: max_seq_len - 1, len(ids) - 1]
            ids, labels = ids[keep], labels[keep]
            labels[-1] = IGNORE_INDEX
        types = np.zeros_like(ids) if with_types else None
        features.append({"input_ids": ids, "token_type_ids": types, "labels": labels})
    return features


# ---------------------------------------------------------------------- question answering
def span_labels(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token span (first, last) of characters [start_char, end_char) in a window's context tokens.

    offsets: (N, 2) character spans of the window's context tokens. None when the answer is not
    fully inside the window (the caller labels the feature with the [CLS] index, as run_qa.py).
    Otherwise run_qa.py's rule: start = the last token starting at or before start_char, end =
    the first token ending at or after end_char. (run_qa.py walks past the context into [SEP] when
    the answer starts on the window's last token; this stays inside the context.)
    """
    if len(offsets) == 0 or not (offsets[0, 0] <= start_char and offsets[-1, 1] >= end_char):
        return None
    start = int(np.flatnonzero(offsets[:, 0] <= start_char)[-1])
    end = int(np.flatnonzero(offsets[:, 1] >= end_char)[0])
    return start, end


def qa_features(tokenizer: Tokenizer, records: Sequence[dict], max_seq_len: int, doc_stride: int,
                max_question_len: int, with_types: bool) -> list[dict]:
    """[CLS] question [SEP] context-window [SEP] features with start/end labels.

    Windows of the context overlap by doc_stride tokens (the QA task's and the Rust tokenizer's
    rule). A window that does not hold the whole (first) gold answer, and every window of an
    unanswerable question, is labelled at the [CLS] index. Questions are cut to max_question_len
    tokens and left-stripped, as at inference and in run_qa.py.
    """
    t = tokenizer.pair_template
    cls_id = tokenizer.cls_token_id
    contexts = list(dict.fromkeys(r["context"] for r in records))
    ctx_encs = dict(zip(contexts, tokenizer.encode(contexts, add_special_tokens=False)))
    questions = [r["question"].lstrip() for r in records]
    q_encs = tokenizer.encode(questions, add_special_tokens=False)
    features = []
    for i, (rec, q_enc) in enumerate(zip(records, q_encs)):
        c_enc = ctx_encs[rec["context"]]
        c_ids = np.asarray(c_enc.ids, dtype=np.int64)
        c_offsets = np.asarray(c_enc.offsets, dtype=np.int64).reshape(-1, 2)
        q_ids = list(q_enc.ids[:max_question_len])
        room = max_seq_len - len(q_ids) - t.n_special
        if room < 1 or len(c_ids) == 0:
            continue  # no room for the context (or no context): nothing to learn from
        head = np.asarray(t.prefix + q_ids + t.middle, dtype=np.int64)
        head_types = np.asarray(t.prefix_types + [t.type_a] * len(q_ids) + t.middle_types, dtype=np.int64)
        tail = np.asarray(t.suffix, dtype=np.int64)
        tail_types = np.asarray(t.suffix_types, dtype=np.int64)
        cls_index = int(np.flatnonzero(head == cls_id)[0]) if cls_id is not None and (head == cls_id).any() else 0
        answer = rec["answers"][0] if rec["answers"] else None
        for a, b in windows(len(c_ids), room, min(doc_stride, room - 1)):
            ids = np.concatenate([head, c_ids[a:b], tail])
            span = None
            if answer is not None:
                start_char = answer["answer_start"]
                span = span_labels(c_offsets[a:b], start_char, start_char + len(answer["text"]))
            start, end = (cls_index, cls_index) if span is None else (len(head) + span[0], len(head) + span[1])
            types = (np.concatenate([head_types, np.full(b - a, t.type_b, dtype=np.int64), tail_types])
                     if with_types else None)
            features.append({"input_ids": ids, "token_type_ids": types, "start_positions": start,
                             "end_positions": end, "example": i})
    return features


# ---------------------------------------------------------------------- batches
def pad_batch(features: Sequence[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad features into (B, T) tensors; array targets padded with IGNORE_INDEX, int targets (B,)."""
    B = len(features)
    T = max(len(f["input_ids"]) for f in features)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    with_types = features[0].get("token_type_ids") is not None
    types = np.zeros((B, T), dtype=np.int64) if with_types else None
    for r, f in enumerate(features):
        n = len(f["input_ids"])
        ids[r, :n] = f["input_ids"]
        mask[r, :n] = 1
        if types is not None:
            types[r, :n] = f["token_type_ids"]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    for key in ("labels", "start_positions", "end_positions"):
        if key not in features[0]:
            continue
        first = features[0][key]
        if isinstance(first, np.ndarray):
            out = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
            for r, f in enumerate(features):
                out[r, : len(f[key])] = f[key]
            batch[key] = torch.from_numpy(out)
        else:
            batch[key] = torch.tensor([int(f[key]) for f in features], dtype=torch.long)
    return batch


def feature_lengths(features: Sequence[dict]) -> list[int]:
    return [len(f["input_ids"]) for f in features]
