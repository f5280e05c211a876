"""Tests for distilkit.tasks.token_classification_decode: hand-made cases per strategy,
then a randomised cross-check against transformers' TokenClassificationPipeline."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from tokenizers import decoders

from distilkit.tasks.token_classification_decode import TokenWindow, decode_entities

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
ID2LABEL = dict(enumerate(LABELS))
TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/distilbert-base-uncased"

# --------------------------------------------------------------------- hand-made cases

_WORDPIECE = decoders.WordPiece()  # what convert_tokens_to_string uses for BERT tokenizers


def _row(label: str, p: float, labels: list[str] = LABELS) -> list[float]:
    """Logits whose softmax puts p on `label` and spreads 1 - p evenly over the rest."""
    rest = (1.0 - p) / (len(labels) - 1)
    return [float(np.log(p if name == label else rest)) for name in labels]


# One toy vocabulary shared by every hand-made window, grown on demand.
_VOCAB: dict[str, int] = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
_INVERSE: dict[int, str] = {i: t for t, i in _VOCAB.items()}


def _token_id(token: str) -> int:
    if token not in _VOCAB:
        _VOCAB[token] = len(_VOCAB)
        _INVERSE[_VOCAB[token]] = token
    return _VOCAB[token]


def _id_to_token(token_id: int) -> str:
    return _INVERSE[token_id]


def _decode(ids: list[int]) -> str:
    return _WORDPIECE.decode([_INVERSE[i] for i in ids])


def _window(text: str, rows: list[tuple[str, str | None, float]], labels: list[str] = LABELS) -> TokenWindow:
    """Build a window from (token, label, prob) rows.

    "[CLS]"/"[SEP]" rows are special tokens; offsets come from scanning the lower-cased
    text for each token (minus "##"); an "[UNK]" row carries its original text as label.
    """
    ids, logits, offsets, special = [], [], [], []
    cursor = 0
    lowered = text.lower()
    for token, label, p in rows:
        ids.append(_token_id(token))
        if token in ("[CLS]", "[SEP]"):
            logits.append(_row(labels[0], 0.5, labels))
            offsets.append((0, 0))
            special.append(True)
            continue
        piece = token.removeprefix("##")
        if token == "[UNK]":
            piece, label = label, labels[0]
        start = lowered.index(piece, cursor)
        cursor = start + len(piece)
        offsets.append((start, cursor))
        logits.append(_row(label, p, labels))
        special.append(False)
    return TokenWindow(
        input_ids=np.array(ids),
        logits=np.array(logits, dtype=np.float32),
        offsets=np.array(offsets),
        special_mask=np.array(special),
    )


HF_TEXT = "Hugging Face Inc is in New York"
# "hu" and "##gging" disagree (B-ORG 0.5 vs I-PER 0.95), so every strategy differs.
HF_ROWS = [
    ("[CLS]", None, 0.0),
    ("hu", "B-ORG", 0.5),
    ("##gging", "I-PER", 0.95),
    ("face", "I-ORG", 0.9),
    ("inc", "I-ORG", 0.8),
    ("is", "O", 0.99),
    ("in", "O", 0.97),
    ("new", "B-LOC", 0.96),
    ("york", "I-LOC", 0.94),
    ("[SEP]", None, 0.0),
]
# average for "hugging": B-ORG (0.5 + 0.05/6)/2 = 0.25417, I-PER (0.5/6 + 0.95)/2 = 0.51667
EXPECTED = {
    "none": [
        ("B-ORG", 0.5, 1, "hu", 0, 2),
        ("I-PER", 0.95, 2, "##gging", 2, 7),
        ("I-ORG", 0.9, 3, "face", 8, 12),
        ("I-ORG", 0.8, 4, "inc", 13, 16),
        ("B-LOC", 0.96, 7, "new", 23, 26),
        ("I-LOC", 0.94, 8, "york", 27, 31),
    ],
    "simple": [
        ("ORG", 0.5, "hu", 0, 2),
        ("PER", 0.95, "##gging", 2, 7),
        ("ORG", 0.85, "face inc", 8, 16),
        ("LOC", 0.95, "new york", 23, 31),
    ],
    "first": [
        ("ORG", 0.73333, "hugging face inc", 0, 16),
        ("LOC", 0.95, "new york", 23, 31),
    ],
    "max": [
        ("PER", 0.95, "hugging", 0, 7),
        ("ORG", 0.85, "face inc", 8, 16),
        ("LOC", 0.95, "new york", 23, 31),
    ],
    "average": [
        ("PER", 0.51667, "hugging", 0, 7),
        ("ORG", 0.85, "face inc", 8, 16),
        ("LOC", 0.95, "new york", 23, 31),
    ],
}


def _run(text, rows, strategy, labels=LABELS, use_decode=False, **kwargs):
    render = {"decode": _decode} if use_decode else {"tokens_to_string": _WORDPIECE.decode}
    return decode_entities(
        text,
        [_window(text, rows, labels)],
        dict(enumerate(labels)),
        strategy,
        id_to_token=_id_to_token,
        unk_token_id=1,
        word_aware=kwargs.pop("word_aware", True),
        **render,
        **kwargs,
    )


def _rounded(entities: list[dict]) -> list[tuple]:
    out = []
    for e in entities:
        assert isinstance(e["score"], float)
        name = e.get("entity_group", e.get("entity"))
        rest = (e["index"],) if "index" in e else ()
        out.append((name, round(e["score"], 5), *rest, e["word"], e["start"], e["end"]))
    return out


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
@pytest.mark.parametrize("use_decode", [False, True], ids=["tokens_to_string", "decode"])
def test_each_strategy_by_hand(strategy: str, use_decode: bool) -> None:
    got = _run(HF_TEXT, HF_ROWS, strategy, use_decode=use_decode)
    assert _rounded(got) == EXPECTED[strategy]
    keys = {"entity", "score", "index", "word", "start", "end"} if strategy == "none" else None
    keys = keys or {"entity_group", "score", "word", "start", "end"}
    assert all(set(e) == keys for e in got)


def test_strategy_name_is_case_insensitive() -> None:
    assert _run(HF_TEXT, HF_ROWS, "SIMPLE") == _run(HF_TEXT, HF_ROWS, "simple")


def test_ignore_labels() -> None:
    everything = _rounded(_run(HF_TEXT, HF_ROWS, "simple", ignore_labels=()))
    assert ("O", 0.98, "is in", 17, 22) in everything
    assert len(everything) == 5
    no_loc = _rounded(_run(HF_TEXT, HF_ROWS, "simple", ignore_labels=["O", "LOC"]))
    assert [e[0] for e in no_loc] == ["ORG", "PER", "ORG"]
    # "none" filters on the full label, "B-LOC" and "I-LOC" separately.
    tokens = _rounded(_run(HF_TEXT, HF_ROWS, "none", ignore_labels=["O", "I-LOC", "B-ORG"]))
    assert [e[0] for e in tokens] == ["I-PER", "I-ORG", "I-ORG", "B-LOC"]


def test_b_and_i_grouping() -> None:
    text = "Ann Bob Carl Dee met"
    rows = [
        ("[CLS]", None, 0),
        ("ann", "B-PER", 0.9),
        ("bob", "B-PER", 0.8),  # B after B: a new entity
        ("carl", "I-PER", 0.7),  # I continues bob
        ("dee", "I-LOC", 0.6),  # I of another tag: a new entity named LOC
        ("met", "O", 0.9),
        ("[SEP]", None, 0),
    ]
    assert _rounded(_run(text, rows, "simple")) == [
        ("PER", 0.9, "ann", 0, 3),
        ("PER", 0.75, "bob carl", 4, 12),
        ("LOC", 0.6, "dee", 13, 16),
    ]
    # Labels without a B-/I- prefix continue each other.
    plain = ["O", "PER", "LOC"]
    rows = [
        ("[CLS]", None, 0),
        ("ann", "PER", 0.9),
        ("bob", "PER", 0.7),
        ("carl", "LOC", 0.6),
        ("[SEP]", None, 0),
    ]
    assert _rounded(_run(text, rows, "simple", labels=plain)) == [
        ("PER", 0.8, "ann bob", 0, 7),
        ("LOC", 0.6, "carl", 8, 12),
    ]


def test_unknown_token_shows_original_text() -> None:
    text = "I \u2603 Paris"
    rows = [
        ("[CLS]", None, 0),
        ("i", "O", 0.9),
        ("[UNK]", "\u2603", 0.9),
        ("paris", "B-LOC", 0.9),
        ("[SEP]", None, 0),
    ]
    got = _run(text, rows, "none", ignore_labels=())
    assert [(e["word"], e["start"], e["end"]) for e in got] == [
        ("i", 0, 1),
        ("\u2603", 2, 3),
        ("paris", 4, 9),
    ]
    # The unknown token is labelled O; make it LOC to see it grouped with "paris".
    window = _window(text, rows)
    window.logits[2] = np.array(_row("B-LOC", 0.9), dtype=np.float32)
    window.logits[3] = np.array(_row("I-LOC", 0.9), dtype=np.float32)
    got = decode_entities(
        text,
        [window],
        ID2LABEL,
        "first",
        id_to_token=_id_to_token,
        tokens_to_string=_WORDPIECE.decode,
        unk_token_id=1,
        word_aware=True,
    )
    assert _rounded(got) == [("LOC", 0.9, "\u2603 paris", 2, 9)]
    # With only decode(ids) the original characters are lost (documented limitation).
    got = decode_entities(
        text,
        [window],
        ID2LABEL,
        "first",
        id_to_token=_id_to_token,
        decode=_decode,
        unk_token_id=1,
        word_aware=True,
    )
    assert _rounded(got) == [("LOC", 0.9, "[UNK] paris", 2, 9)]


def test_fallback_heuristic_warns_and_groups_glued_tokens() -> None:
    # A BPE-like tokenizer without "##": "Hug" + "ging" are glued, so one word.
    text = "Hugging Face"
    rows = [
        ("[CLS]", None, 0),
        ("hug", "B-ORG", 0.6),
        ("ging", "I-PER", 0.9),
        ("face", "I-ORG", 0.8),
        ("[SEP]", None, 0),
    ]
    with pytest.warns(UserWarning, match="fallback heuristic"):
        got = _run(text, rows, "first", word_aware=False)
    assert _rounded(got) == [("ORG", 0.7, "hug ging face", 0, 12)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(text, rows, "simple", word_aware=False)  # no warning for none/simple


def test_overlapping_windows_merge() -> None:
    text = "Hugging Face Inc is in New York"
    first_rows = HF_ROWS[:6] + [("[SEP]", None, 0)]  # hu .. is
    # Second window starts mid-word at "##gging" (a stride cut) and sees the rest.
    second_rows = [("[CLS]", None, 0)] + HF_ROWS[2:]
    windows = [_window(text, first_rows), _window(text, second_rows)]
    kwargs = dict(
        id_to_token=_id_to_token, tokens_to_string=_WORDPIECE.decode, unk_token_id=1, word_aware=True
    )
    got = decode_entities(text, windows, ID2LABEL, "simple", **kwargs)
    # Window 1: ORG hu | PER ##gging | ORG face inc. Window 2: PER ##gging | ORG face inc
    # | LOC new york. Equal spans keep the first seen (equal scores), LOC only in window 2.
    assert _rounded(got) == EXPECTED["simple"]
    # "max": window 2 starts with "##gging" as a word of its own (PER 2-7); window 1's
    # "hugging" (PER 0-7) is longer and wins.
    got = decode_entities(text, windows, ID2LABEL, "max", **kwargs)
    assert _rounded(got) == EXPECTED["max"]


def test_errors() -> None:
    window = _window(HF_TEXT, HF_ROWS)
    kwargs = dict(id_to_token=_id_to_token, decode=_decode, unk_token_id=1, word_aware=True)
    with pytest.raises(ValueError, match="'none', 'simple', 'first', 'average', 'max'"):
        decode_entities(HF_TEXT, [window], ID2LABEL, "longest", **kwargs)
    with pytest.raises(ValueError, match="overlapping windows"):
        decode_entities(HF_TEXT, [window, window], ID2LABEL, "none", **kwargs)
    with pytest.raises(ValueError, match="at least one window"):
        decode_entities(HF_TEXT, [], ID2LABEL, "simple", **kwargs)
    with pytest.raises(ValueError, match="no label for class ids"):
        decode_entities(HF_TEXT, [window], {0: "O"}, "simple", **kwargs)
    with pytest.raises(ValueError, match="tokens_to_string or decode"):
        decode_entities(
            HF_TEXT, [window], ID2LABEL, "simple", id_to_token=_id_to_token, unk_token_id=1, word_aware=True
        )
    bad = TokenWindow(window.input_ids[:-1], window.logits, window.offsets, window.special_mask)
    with pytest.raises(ValueError, match="disagree"):
        decode_entities(HF_TEXT, [bad], ID2LABEL, "simple", **kwargs)


# ------------------------------------------------------- cross-check vs transformers

SENTENCES = [
    "Hugging Face Inc. is a company based in New York City.",
    "My name is Wolfgang and I live in Berlin.",
    "Sarah Connor met John at Cyberdyne Systems in Los Angeles!",
    "Zürich, Genève and São Paulo aren't tokenised like Paris.",
    "The quick brown fox 🤗 jumps over the lazy dog ☃ twice.",
    "Electroencephalography researchers at MIT's Koch Institute published 42 papers.",
    "it's a well-known fact that Angela Merkel visited Washington D.C. in 2015",
    "Transformers, tokenizers & datasets: three libraries by HuggingFace",
    "Prof. Dr. Jean-Baptiste Poquelin wrote plays in seventeenth-century France.",
    # Decomposed accents: "koln" spans the 5 characters "Ko\u0308ln", so the word-aware
    # length rule calls it a subword and glues it to "in" (a reference quirk).
    "They met at the cafe\u0301 in Ko\u0308ln.",
    "a",
]
STRATEGIES = ["none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    if not TOKENIZER_DIR.is_dir():
        pytest.skip(f"WordPiece tokenizer not found at {TOKENIZER_DIR}")
    tok = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from threads, and CI boxes are small
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )
    model = transformers.BertForTokenClassification(config).eval()
    with torch.no_grad():
        # Unit-scale classifier weights (init is std 0.02) so the argmax label varies from
        # token to token, and a bias towards "O" so that O-filtering and B/I merging both
        # happen: about 1/3 O, the rest spread over B-/I- of every tag.
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.copy_(torch.tensor([4.0, 0, 0, 0, 0, 0, 0]))
    yield transformers, torch, tok, model
    torch.set_num_threads(threads)


def _our_windows(torch, tok, model, text: str, **tok_kwargs) -> list[TokenWindow]:
    enc = tok(
        text, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt", **tok_kwargs
    )
    windows = []
    for i in range(enc["input_ids"].shape[0]):
        # Feed each window alone (with its padding), as the pipeline does, then drop padding.
        inputs = {k: enc[k][i : i + 1] for k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            logits = model(**inputs).logits[0].numpy()
        keep = enc["attention_mask"][i].numpy().astype(bool)
        windows.append(
            TokenWindow(
                input_ids=enc["input_ids"][i].numpy()[keep],
                logits=logits[keep],
                offsets=enc["offset_mapping"][i].numpy()[keep],
                special_mask=enc["special_tokens_mask"][i].numpy()[keep].astype(bool),
            )
        )
    return windows


def _compare(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b)
        for key in a:
            if key == "score":
                assert a[key] == pytest.approx(float(b[key]), abs=1e-6)
            else:
                assert a[key] == b[key], (key, a, b)


def _decode_kwargs(tok) -> dict:
    return dict(
        id_to_token=tok.convert_ids_to_tokens,
        tokens_to_string=tok.convert_tokens_to_string,
        unk_token_id=tok.unk_token_id,
        word_aware=bool(tok._tokenizer.model.continuing_subword_prefix),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_transformers_pipeline(reference, strategy: str) -> None:
    transformers, torch, tok, model = reference
    pipe = transformers.pipeline(
        "token-classification", model=model, tokenizer=tok, aggregation_strategy=strategy
    )
    n_found = 0
    for text in SENTENCES:
        theirs = pipe(text)
        ours = decode_entities(
            text, _our_windows(torch, tok, model, text), ID2LABEL, strategy, **_decode_kwargs(tok)
        )
        _compare(ours, theirs)
        n_found += len(ours)
    assert n_found > 10  # the random model must predict non-O labels for this to mean anything


@pytest.mark.parametrize("strategy", STRATEGIES[1:])
def test_matches_transformers_pipeline_with_stride(reference, strategy: str) -> None:
    transformers, torch, base_tok, model = reference
    tok = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=12)
    pipe = transformers.pipeline(
        "token-classification", model=model, tokenizer=tok, aggregation_strategy=strategy
    )
    n_windows = n_merged_away = 0
    for text in SENTENCES:
        theirs = pipe(text, stride=4)
        windows = _our_windows(
            torch, tok, model, text, truncation=True, return_overflowing_tokens=True, stride=4, padding=True
        )
        n_windows += len(windows)
        ours = decode_entities(text, windows, ID2LABEL, strategy, **_decode_kwargs(tok))
        _compare(ours, theirs)
        per_window = [decode_entities(text, [w], ID2LABEL, strategy, **_decode_kwargs(tok)) for w in windows]
        n_merged_away += sum(map(len, per_window)) - len(ours)
    assert n_windows > 1.5 * len(SENTENCES)  # most sentences really are split
    assert n_merged_away > 5  # and overlapping entities really were merged
