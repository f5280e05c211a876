"""Readers of the real formats, NER label alignment, QA windows and span labels (against run_qa.py)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from distilkit.data import collate as C
from distilkit.data.readers import (
    DataError,
    parse_range,
    read_conll,
    read_records,
    read_squad,
    read_text_label,
    read_texts,
)
from distilkit.tokenizer import Tokenizer


# ---------------------------------------------------------------------- readers
def test_text_label_reader_skips_blank_lines_and_splits_on_the_last_separator(tmp_path):
    f = tmp_path / "val.txt"
    f.write_text("\ni feel good;joy\nsemi;colon inside;sadness\n\n")
    assert read_text_label(f) == [{"text": "i feel good", "label": "joy"},
                                  {"text": "semi;colon inside", "label": "sadness"}]
    f.write_text("no label here\n")
    with pytest.raises(DataError, match="val.txt:1"):
        read_text_label(f)


def test_conll_reader(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n"
                 "Blackburn NNP I-NP I-PER")  # no final blank line
    assert read_conll(f) == [{"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]},
                             {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]}]


def squad_file(path, articles):
    path.write_text(json.dumps({"version": "v2.0", "data": [
        {"title": t, "paragraphs": [{"context": c, "qas": qas}]} for t, c, qas in articles]}))
    return path


def test_squad_reader_selects_articles(tmp_path):
    f = squad_file(tmp_path / "s.json", [
        ("a", "Paris is in France.", [{"id": "1", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]}]),
        ("b", "Nothing here.", [{"id": "2", "question": "Who?", "answers": [], "is_impossible": True}]),
        ("c", "Bob ran.", [{"id": "3", "question": "Who ran?", "answers": [{"text": "Bob", "answer_start": 0}]}]),
    ])
    assert [r["id"] for r in read_squad(f)] == ["1", "2", "3"]
    assert [r["id"] for r in read_squad(f, slice(1, 3))] == ["2", "3"]
    rec = read_records("question-answering", f, select=":1")[0]
    assert rec == {"id": "1", "question": "Where?", "context": "Paris is in France.",
                   "answers": [{"text": "France", "answer_start": 12}], "is_impossible": False}
    assert read_squad(f)[1]["is_impossible"]


def test_jsonl_and_csv_with_column_mapping(tmp_path):
    f = tmp_path / "d.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"review": "great", "sentiment": 1}) + "\n\n" + json.dumps({"review": "bad", "sentiment": 0}) + "\n")
    recs = read_records("text-classification", f, columns={"text": "review", "label": "sentiment"},
                        label_names=["neg", "pos"])
    assert recs == [{"text": "great", "label": "pos"}, {"text": "bad", "label": "neg"}]
    with pytest.raises(DataError, match="no column 'text'"):
        read_records("text-classification", f)
    c = tmp_path / "ner.csv"
    c.write_text("words,ner\nEU rejects,B-ORG O\n")
    assert read_records("token-classification", c, columns={"tokens": "words", "tags": "ner"}) == [
        {"tokens": ["EU", "rejects"], "tags": ["B-ORG", "O"]}]
    q = tmp_path / "qa.jsonl"
    q.write_text(json.dumps({"id": 7, "question": "q", "context": "ab", "answers": {"text": ["b"], "answer_start": [1]}}))
    assert read_records("question-answering", q)[0]["answers"] == [{"text": "b", "answer_start": 1}]
    assert read_texts(f, "review", select="1:") == ["bad"]


def test_ranges():
    assert parse_range("0:12") == slice(0, 12)
    assert parse_range(":100") == slice(None, 100)
    assert parse_range(None) is None and parse_range("") is None
    with pytest.raises(DataError):
        parse_range("12")


def test_real_files_read(shared_data):
    assert len(read_records("text-classification", shared_data / "emotion/val.txt")) == 2000
    conll = read_records("token-classification", shared_data / "conll2003/test.txt")
    assert len(conll) == 3453
    squad = read_records("question-answering", shared_data / "squad/dev-v2.0-half.json", select="12:16")
    assert len(squad) == 364 + 486 + 402 + 377


# ---------------------------------------------------------------------- NER label alignment
def test_align_labels_first_piece_and_all_pieces():
    # [CLS] Wash ##ington went [SEP]: word 0 = B-LOC (1), word 1 = O (0); I-LOC = 2
    word_ids = [None, 0, 0, 1, None]
    first = C.align_labels(word_ids, [1, 0])
    assert first.tolist() == [-100, 1, -100, 0, -100]
    every = C.align_labels(word_ids, [1, 0], label_all_tokens=True, b_to_i={1: 2})
    assert every.tolist() == [-100, 1, 2, 0, -100]
    assert C.b_to_i_map({"O": 0, "B-LOC": 1, "I-LOC": 2, "B-X": 3}) == {1: 2}


def test_ner_features_label_the_first_word_piece(wordpiece_dir):
    tok = Tokenizer.from_pretrained(wordpiece_dir)
    labels = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}
    rec = {"tokens": ["Alice", "visited", "Seattle", "yesterday"], "tags": ["B-PER", "O", "B-LOC", "O"]}
    f = C.ner_features(tok, [rec], labels, max_seq_len=64, with_types=False)[0]
    enc = tok.rust.encode(rec["tokens"], is_pretokenized=True)
    assert f["input_ids"].tolist() == enc.ids
    assert f["token_type_ids"] is None
    for pos, w in enumerate(enc.word_ids):
        first = w is not None and (pos == 0 or enc.word_ids[pos - 1] != w)
        expected = labels[rec["tags"][w]] if first else -100
        assert f["labels"][pos] == expected
    assert any(enc.word_ids[p] == enc.word_ids[p - 1] is not None for p in range(1, len(enc.ids))), "want a split word"
    every = C.ner_features(tok, [rec], labels, 64, True, label_all_tokens=True)[0]
    assert (every["labels"][1:-1] != -100).all() and every["token_type_ids"].tolist() == [0] * len(enc.ids)
    cut = C.ner_features(tok, [rec], labels, max_seq_len=4, with_types=False)[0]
    assert len(cut["input_ids"]) == 4 and cut["input_ids"][-1] == tok.sep_token_id and cut["labels"][-1] == -100


# ---------------------------------------------------------------------- QA span labels
def test_span_labels():
    offsets = np.array([[0, 5], [6, 9], [9, 12], [13, 20]])  # "Hello wor ld! goodbye"
    assert C.span_labels(offsets, 6, 12) == (1, 2)
    assert C.span_labels(offsets, 7, 10) == (1, 2)  # inside tokens: the tokens that hold them
    assert C.span_labels(offsets, 13, 20) == (3, 3)  # the window's last token
    assert C.span_labels(offsets, 0, 5) == (0, 0)
    assert C.span_labels(offsets, 10, 25) is None  # runs past the window
    assert C.span_labels(offsets[1:], 0, 5) is None  # starts before it


def reference_prepare_train_features(tokenizer, examples, max_len, stride):
    """transformers' examples/pytorch/question-answering/run_qa.py prepare_train_features (pad on right)."""
    tokenized = tokenizer([q.lstrip() for q in examples["question"]], examples["context"], truncation="only_second",
                          max_length=max_len, stride=stride, return_overflowing_tokens=True,
                          return_offsets_mapping=True)
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            starts.append(cls_index), ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            starts.append(cls_index), ends.append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            starts.append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            ends.append(token_end_index + 1)
    return tokenized["input_ids"], tokenized["token_type_ids"], starts, ends


def test_qa_features_match_run_qa_prepare_train_features(wordpiece_dir):
    from transformers import BertTokenizerFast

    context = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. "
               "Paris is the capital of France and its largest city. Alice is sitting on the bench. "
               "Bob is sitting next to her. Hugging Face Inc. is a company based in New York City.")
    qa = [("Who gave their name to Normandy?", "The Normans"), ("  What is the capital of France?", "Paris"),
          ("Where is the company based?", "New York City"), ("Who sits next to Alice?", "Bob"),
          ("When did it happen?", "10th and 11th centuries"), ("What is the weather?", None)]
    records = []
    for i, (q, a) in enumerate(qa):
        answers = [{"text": a, "answer_start": context.index(a)}] if a else []
        records.append({"id": str(i), "question": q, "context": context, "answers": answers})
    tok = Tokenizer.from_pretrained(wordpiece_dir)
    hf = BertTokenizerFast.from_pretrained(str(wordpiece_dir))
    examples = {"question": [r["question"] for r in records], "context": [r["context"] for r in records],
                "answers": [{"text": [a["text"] for a in r["answers"]], "answer_start": [a["answer_start"] for a in r["answers"]]}
                            for r in records]}
    for max_len, stride in [(40, 10), (64, 20), (256, 128)]:
        ids, types, starts, ends = reference_prepare_train_features(hf, examples, max_len, stride)
        ours = C.qa_features(tok, records, max_len, stride, max_question_len=64, with_types=True)
        assert [f["input_ids"].tolist() for f in ours] == ids
        assert [f["token_type_ids"].tolist() for f in ours] == types
        assert [f["start_positions"] for f in ours] == starts
        assert [f["end_positions"] for f in ours] == ends
        if max_len == 40:  # several windows: answers outside a window are labelled at [CLS]
            assert len(ours) > 2 * len(records) and starts.count(0) > len(ours) // 2
        for f in ours:
            if f["start_positions"]:
                answer = records[f["example"]]["answers"][0]["text"]
                span = tok.decode(f["input_ids"][f["start_positions"]: f["end_positions"] + 1]).replace(" ", "")
                assert span == answer.lower().replace(" ", "")


def test_pad_batch():
    feats = [{"input_ids": np.array([2, 5, 3]), "token_type_ids": None, "labels": np.array([-100, 1, -100])},
             {"input_ids": np.array([2, 3]), "token_type_ids": None, "labels": np.array([-100, -100])}]
    b = C.pad_batch(feats, pad_id=0)
    assert b["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    assert "token_type_ids" not in b
    qa = C.pad_batch([{"input_ids": np.array([1, 2]), "token_type_ids": np.array([0, 1]), "start_positions": 1,
                       "end_positions": 1}], pad_id=0)
    assert qa["start_positions"].tolist() == [1] and qa["token_type_ids"].tolist() == [[0, 1]]
