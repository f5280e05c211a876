"""Our tokenizer against transformers' on real text: ids, type ids and character offsets."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil

import pytest
import transformers as T

from distilkit.tokenizer import Tokenizer, windows


def real_lines(data) -> list[str]:
    """1,000 lines: 250 each of emotion, CoNLL sentences, IMDB reviews and SQuAD contexts."""
    emotion = [line.rsplit(";", 1)[0] for line in (data / "emotion/train.txt").read_text().splitlines() if line.strip()]
    conll, words = [], []
    for line in (data / "conll2003/train.txt").read_text().splitlines():
        if line.strip():
            words.append(line.split()[0])
        elif words:
            conll.append(" ".join(words))
            words = []
    with gzip.open(data / "imdb/train.jsonl.gz", "rt") as f:
        imdb = [json.loads(line)["text"] for line in itertools.islice(f, 250)]
    squad = json.loads((data / "squad/dev-v2.0-half.json").read_text())
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    return emotion[:250] + conll[:250] + imdb + contexts[:250]


def test_real_tokenizer_matches_transformers(shared_data):
    path = shared_data / "tokenizers/distilbert-base-uncased"
    ref = T.AutoTokenizer.from_pretrained(path)
    ours = Tokenizer.from_pretrained(path)
    lines = real_lines(shared_data)
    assert len(lines) == 1000
    expected = ref(lines, return_offsets_mapping=True)
    for line, enc, ids, offsets in zip(lines, ours.encode(lines), expected["input_ids"], expected["offset_mapping"]):
        assert enc.ids == ids, line
        assert [tuple(o) for o in enc.offsets] == [tuple(o) for o in offsets], line
    assert ours.mask_token == "[MASK]" and ours.mask_token_id == ref.mask_token_id
    assert ours.model_max_length == 512


def test_vocab_txt_alone_builds_the_same_tokenizer(shared_data, tmp_path):
    src = shared_data / "tokenizers/distilbert-base-uncased"
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(src / name, tmp_path / name)
    ours = Tokenizer.from_pretrained(tmp_path)
    ref = Tokenizer.from_pretrained(src)
    lines = real_lines(shared_data)[::10]
    for a, b in zip(ours.encode(lines), ref.encode(lines)):
        assert a.ids == b.ids and a.offsets == b.offsets


def test_pairs_match_transformers(wordpiece_dir):
    ref = T.AutoTokenizer.from_pretrained(wordpiece_dir)
    ours = Tokenizer.from_pretrained(wordpiece_dir)
    pairs = [("What is my name?", "My name is John and I live in Seattle."), ("Who?", "Alice is on the bench.")]
    expected = ref([p[0] for p in pairs], [p[1] for p in pairs], return_offsets_mapping=True)
    for enc, ids, types, offsets in zip(ours.encode_pairs(pairs), expected["input_ids"], expected["token_type_ids"],
                                        expected["offset_mapping"]):
        assert enc.ids == ids and enc.type_ids == types
        assert [tuple(o) for o in enc.offsets] == [tuple(o) for o in offsets]  # into each text of the pair
    t = ours.pair_template
    assert (t.prefix, t.middle, t.suffix) == ([ours.cls_token_id], [ours.sep_token_id], [ours.sep_token_id])


def test_byte_level_bpe_from_vocab_and_merges(bpe_dir, tmp_path):
    """RoBERTa's tokenizer rebuilt from vocab.json + merges.txt equals transformers' fast one."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(bpe_dir / name, tmp_path / name)
    ours = Tokenizer.from_pretrained(tmp_path)
    ref = T.RobertaTokenizerFast(vocab_file=str(bpe_dir / "vocab.json"), merges_file=str(bpe_dir / "merges.txt"))
    texts = ["Paris is the <mask> of France.", "  Café crème — 東京 😀  twice  spaced", "Hello world", "x"]
    expected = ref(texts, return_offsets_mapping=True)
    for enc, ids, offsets in zip(ours.encode(texts), expected["input_ids"], expected["offset_mapping"]):
        assert enc.ids == ids
        assert [tuple(o) for o in enc.offsets] == [tuple(o) for o in offsets]
    pair = ours.encode_pairs([("a question", "a context")])[0]
    ref_pair = ref("a question", "a context")["input_ids"]
    assert pair.ids == ref_pair  # <s> q </s></s> c </s>
    assert ours.mask_token == "<mask>" and ours.decode(ours.encode(["Hello world"])[0].ids, True) == "Hello world"
    # Saved as tokenizer.json, it loads back the same.
    ours.save(tmp_path / "saved")
    again = Tokenizer.from_pretrained(tmp_path / "saved")
    for a, b in zip(again.encode(texts), ours.encode(texts)):
        assert (a.ids, a.offsets) == (b.ids, b.offsets)


@pytest.mark.parametrize("n,size,stride,expected", [
    (5, 10, 2, [(0, 5)]),
    (10, 10, 2, [(0, 10)]),
    (11, 10, 2, [(0, 10), (8, 11)]),
    (25, 10, 3, [(0, 10), (7, 17), (14, 24), (21, 25)]),
    (20, 10, 0, [(0, 10), (10, 20)]),
])
def test_windows_follow_the_rust_overflow_rule(n, size, stride, expected):
    assert windows(n, size, stride) == expected


def test_windows_match_rust_truncation(wordpiece_dir):
    """Our window cut equals the Rust tokenizer's overflowing truncation of a pair's second text."""
    ours = Tokenizer.from_pretrained(wordpiece_dir)
    ref = T.AutoTokenizer.from_pretrained(wordpiece_dir)
    q, c = "Where do I live?", " ".join(["My name is John and I live in Seattle."] * 6)
    enc = ref(q, c, truncation="only_second", max_length=24, stride=5, return_overflowing_tokens=True)
    n_q = len(ours.encode([q], add_special_tokens=False)[0].ids)
    ctx = ours.encode([c], add_special_tokens=False)[0].ids
    cut = windows(len(ctx), 24 - n_q - 3, 5)
    assert [ids[n_q + 2:-1] for ids in enc["input_ids"]] == [ctx[a:b] for a, b in cut]
