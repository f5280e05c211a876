"""Token-classification (NER) decoding: per-token logits -> entity dicts.

Pure functions over numpy arrays with the semantics of the transformers 4.57
``TokenClassificationPipeline.postprocess`` (softmax, subword detection, word
aggregation, B-/I- grouping, label filtering, merging of overlapping stride windows).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AGGREGATION_STRATEGIES", "TokenWindow", "decode_entities", "softmax"]

AGGREGATION_STRATEGIES: tuple[str, ...] = ("none", "simple", "first", "average", "max")
_WORD_STRATEGIES = frozenset({"first", "average", "max"})


@dataclass
class TokenWindow:
    """One tokenized window of one input text (no padding)."""

    input_ids: np.ndarray  # (T,) int
    logits: np.ndarray  # (T, C) raw model logits for this window
    offsets: np.ndarray  # (T, 2) int character offsets into the ORIGINAL text
    special_mask: np.ndarray  # (T,) bool, True for [CLS]/[SEP]/<s>/</s>/padding


@dataclass
class _Piece:
    """One non-special token before any labelling (the reference's "pre_entity")."""

    token: str  # id_to_token(id), or the original text slice for the unknown token
    token_id: int
    scores: np.ndarray  # (C,) float32 probabilities
    start: int
    end: int
    index: int  # position inside its window, special tokens included
    is_subword: bool


@dataclass
class _Labelled:
    """A token (strategy "simple") or a whole word (first/average/max) with its label."""

    entity: str
    score: np.float32
    word: str  # exact rendering of the token/word (tokens_to_string path)
    ids: list[int]  # token ids covered, for the decode(ids) fallback
    start: int
    end: int


# Renders the text of a group of labelled items: exact when the caller gives
# tokens_to_string (= tokenizer.convert_tokens_to_string, applied to words like the
# reference does), else decode(ids) over every covered token id.
_Render = Callable[[list[_Labelled]], str]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float32, the same operations as the reference. (T, C) -> (T, C)."""
    logits = np.asarray(logits, dtype=np.float32)
    maxes = np.max(logits, axis=-1, keepdims=True)
    shifted_exp = np.exp(logits - maxes)
    return shifted_exp / shifted_exp.sum(axis=-1, keepdims=True)


def decode_entities(
    text: str,
    windows: list[TokenWindow],
    id2label: dict[int, str],
    aggregation_strategy: str = "none",
    ignore_labels: Sequence[str] = ("O",),
    *,
    id_to_token: Callable[[int], str],
    decode: Callable[[list[int]], str] | None = None,
    tokens_to_string: Callable[[list[str]], str] | None = None,
    unk_token_id: int | None,
    word_aware: bool,
) -> list[dict]:
    """Decode the windows of one input text into entities, like the reference pipeline.

    Returns, for ``aggregation_strategy="none"``, one dict per kept token
    ``{"entity", "score", "index", "word", "start", "end"}`` (``index`` counts the
    window's special tokens); otherwise one dict per entity group
    ``{"entity_group", "score", "word", "start", "end"}``. Scores are Python floats.

    ``word_aware``: True when the tokenizer model has a continuing-subword prefix
    (WordPiece "##"); a token is then a subword when its length differs from its text
    span. Otherwise the reference's heuristic is used (no space just before the token),
    with a ``UserWarning`` for first/average/max.

    Group text (aggregation strategies only) needs ``tokens_to_string`` (like
    ``tokenizer.convert_tokens_to_string``; exact) or ``decode`` (like
    ``tokenizer.decode(ids)``). With a ``tokenizers.Tokenizer`` pass
    ``tokens_to_string=tok.decoder.decode``. ``decode`` differs from the reference in one
    case: an unknown token renders as the unk string ("[UNK]") instead of its original text.

    Several windows (stride) are decoded one by one, filtered, then overlapping entities
    are merged (longer span wins, then higher score). The reference refuses a stride
    with strategy "none", and so do we: per-window ``index`` values cannot be merged
    meaningfully, so several windows with "none" raise ``ValueError``.
    """
    strategy = _check_strategy(aggregation_strategy)
    if not windows:
        raise ValueError("decode_entities needs at least one window")
    if strategy == "none" and len(windows) > 1:
        raise ValueError(
            f'aggregation_strategy="none" cannot merge {len(windows)} overlapping windows '
            "(stride); pick one of 'simple', 'first', 'average', 'max', or use one window"
        )
    render = _make_renderer(strategy, decode, tokens_to_string)
    if strategy in _WORD_STRATEGIES and not word_aware:
        # The reference warns once per token; once per call says the same thing.
        warnings.warn(
            "Tokenizer does not support real words, using fallback heuristic",
            UserWarning,
            stacklevel=2,
        )
    ignored = set(ignore_labels)

    entities: list[dict] = []
    for window in windows:
        scores = softmax(_check_window(window, id2label))
        pieces = _gather_pieces(text, window, scores, id_to_token, unk_token_id, word_aware)
        if strategy == "none":
            found = _label_tokens_none(pieces, id2label)
            entities.extend(e for e in found if e["entity"] not in ignored)
        else:
            found = _group_entities(_label_items(pieces, strategy, id2label, render), render)
            entities.extend(e for e in found if e["entity_group"] not in ignored)
    if len(windows) > 1:
        entities = _merge_overlapping(entities)
    for entity in entities:
        entity["score"] = float(entity["score"])
    return entities


# --------------------------------------------------------------------------- checks


def _check_strategy(aggregation_strategy: str) -> str:
    # The reference looks the name up case-insensitively (AggregationStrategy[s.upper()]).
    strategy = aggregation_strategy.lower() if isinstance(aggregation_strategy, str) else None
    if strategy not in AGGREGATION_STRATEGIES:
        raise ValueError(
            f"aggregation_strategy must be one of {', '.join(map(repr, AGGREGATION_STRATEGIES))}; "
            f"got {aggregation_strategy!r}"
        )
    return strategy


def _check_window(window: TokenWindow, id2label: dict[int, str]) -> np.ndarray:
    """Validate shapes and label coverage; return the logits as (T, C) float32."""
    logits = np.asarray(window.logits, dtype=np.float32)
    if logits.ndim != 2:
        raise ValueError(f"window logits must be (T, C); got shape {logits.shape}")
    n_tokens, n_classes = logits.shape
    if (
        np.shape(window.input_ids) != (n_tokens,)
        or np.shape(window.offsets) != (n_tokens, 2)
        or np.shape(window.special_mask) != (n_tokens,)
    ):
        raise ValueError(
            f"window arrays disagree: logits {logits.shape}, input_ids {np.shape(window.input_ids)}, "
            f"offsets {np.shape(window.offsets)}, special_mask {np.shape(window.special_mask)}"
        )
    missing = [i for i in range(n_classes) if i not in id2label]
    if missing:
        raise ValueError(f"id2label has no label for class ids {missing} (logits have {n_classes})")
    return logits


def _make_renderer(
    strategy: str,
    decode: Callable[[list[int]], str] | None,
    tokens_to_string: Callable[[list[str]], str] | None,
) -> _Render:
    if tokens_to_string is not None:
        return lambda items: tokens_to_string([item.word for item in items])
    if decode is not None:
        return lambda items: decode([i for item in items for i in item.ids])
    if strategy != "none":
        raise ValueError(
            f'aggregation_strategy="{strategy}" needs tokens_to_string or decode to render words'
        )
    return lambda items: ""  # never called for "none"


# ----------------------------------------------------------------- per-token pieces


def _gather_pieces(
    text: str,
    window: TokenWindow,
    scores: np.ndarray,
    id_to_token: Callable[[int], str],
    unk_token_id: int | None,
    word_aware: bool,
) -> list[_Piece]:
    """Non-special tokens of one window with their (C,) probabilities and subword flag."""
    pieces: list[_Piece] = []
    input_ids = np.asarray(window.input_ids)
    offsets = np.asarray(window.offsets)
    special = np.asarray(window.special_mask).astype(bool)
    for idx in range(len(input_ids)):
        if special[idx]:
            continue
        token_id = int(input_ids[idx])
        start, end = int(offsets[idx, 0]), int(offsets[idx, 1])
        token = id_to_token(token_id)
        span = text[start:end]
        if word_aware:
            # WordPiece: "##ing" is longer than its span "ing"; a word start is not.
            is_subword = len(token) != len(span)
        else:
            # Reference fallback: a token glued to the previous character is a subword.
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if unk_token_id is not None and token_id == unk_token_id:
            # Show the original characters rather than "[UNK]", and start a new word.
            token = span
            is_subword = False
        pieces.append(_Piece(token, token_id, scores[idx], start, end, idx, is_subword))
    return pieces


def _label_tokens_none(pieces: list[_Piece], id2label: dict[int, str]) -> list[dict]:
    entities = []
    for piece in pieces:
        best = int(piece.scores.argmax())
        entities.append(
            {
                "entity": id2label[best],
                "score": piece.scores[best],
                "index": piece.index,
                "word": piece.token,
                "start": piece.start,
                "end": piece.end,
            }
        )
    return entities


# ------------------------------------------------------------ labelling + grouping


def _label_items(
    pieces: list[_Piece], strategy: str, id2label: dict[int, str], render: _Render
) -> list[_Labelled]:
    """Strategy "simple": one item per token; first/average/max: one item per word."""
    if strategy == "simple":
        items = []
        for piece in pieces:
            best = int(piece.scores.argmax())
            items.append(
                _Labelled(
                    id2label[best], piece.scores[best], piece.token, [piece.token_id], piece.start, piece.end
                )
            )
        return items

    # A word is a non-subword piece followed by its subword pieces; a window that
    # starts mid-word (stride) starts its first word with a subword piece.
    words: list[list[_Piece]] = []
    for piece in pieces:
        if words and piece.is_subword:
            words[-1].append(piece)
        else:
            words.append([piece])
    return [_label_word(word, strategy, id2label, render) for word in words]


def _label_word(word: list[_Piece], strategy: str, id2label: dict[int, str], render: _Render) -> _Labelled:
    if strategy == "first":
        scores = word[0].scores
        best = int(scores.argmax())
        score = scores[best]
    elif strategy == "max":
        # The piece holding the single highest probability decides (first one on ties).
        scores = max(word, key=lambda piece: piece.scores.max()).scores
        best = int(scores.argmax())
        score = scores[best]
    else:  # average: mean probability row over the pieces, (n, C) -> (C,)
        mean_scores = np.nanmean(np.stack([piece.scores for piece in word]), axis=0)
        best = int(mean_scores.argmax())
        score = mean_scores[best]
    # The word's text is already rendered here (tokens_to_string of its pieces), and the
    # group rendering later joins words, exactly as the reference does.
    pieces_as_items = [_Labelled("", score, p.token, [p.token_id], p.start, p.end) for p in word]
    return _Labelled(
        entity=id2label[best],
        score=score,
        word=render(pieces_as_items),
        ids=[p.token_id for p in word],
        start=word[0].start,
        end=word[-1].end,
    )


def _split_tag(label: str) -> tuple[str, str]:
    """("B"|"I", tag); a label without a B-/I- prefix counts as a continuation "I"."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group_entities(items: list[_Labelled], render: _Render) -> list[dict]:
    """Merge adjacent items with the same tag unless the newcomer is a B- label."""
    groups: list[list[_Labelled]] = []
    for item in items:
        if groups:
            bi, tag = _split_tag(item.entity)
            _, last_tag = _split_tag(groups[-1][-1].entity)
            if tag == last_tag and bi != "B":
                groups[-1].append(item)
                continue
        groups.append([item])
    return [_summarise_group(group, render) for group in groups]


def _summarise_group(group: list[_Labelled], render: _Render) -> dict:
    # The group's name comes from its first item, with everything up to the first "-"
    # dropped (so "E-PER" -> "PER", unlike _split_tag), as in the reference.
    name = group[0].entity.split("-", 1)[-1]
    # float32 mean, same numpy calls as the reference so the scores agree bit for bit.
    score = np.mean(np.nanmean([item.score for item in group]))
    return {
        "entity_group": name,
        "score": score,
        "word": render(group),
        "start": group[0].start,
        "end": group[-1].end,
    }


def _merge_overlapping(entities: list[dict]) -> list[dict]:
    """Merge entities from overlapping windows: among entities whose start falls inside
    the current one, keep the longer span, then the higher score (reference algorithm)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])  # stable, like the reference
    merged: list[dict] = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length = entity["end"] - entity["start"]
            previous_length = previous["end"] - previous["start"]
            if length > previous_length or (
                length == previous_length and entity["score"] > previous["score"]
            ):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged
