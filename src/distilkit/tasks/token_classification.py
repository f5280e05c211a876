"""token-classification (NER): entities with character offsets, as the transformers pipeline
returns them. Texts over the model's limit are cut into overlapping windows (the reference
silently truncates them) and entities from the windows are merged by `decode_entities`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..batching import Feature
from ..errors import InputError
from .base import Task
from .token_classification_decode import AGGREGATION_STRATEGIES, TokenWindow, decode_entities
from ..tokenizer import windows


@dataclass
class TokenClassificationParams:
    aggregation_strategy: str = "none"  # none | simple | first | average | max
    ignore_labels: list[str] = field(default_factory=lambda: ["O"])
    stride: int | None = None  # overlap between windows of long texts; default a quarter window

    def __post_init__(self):
        self.aggregation_strategy = self.aggregation_strategy.lower()
        if self.aggregation_strategy not in AGGREGATION_STRATEGIES:
            raise InputError(f"aggregation_strategy must be one of {', '.join(AGGREGATION_STRATEGIES)}, "
                             f"got {self.aggregation_strategy!r}", "aggregation_strategy")
        if self.stride is not None and self.stride < 0:
            raise InputError(f"stride must be >= 0, got {self.stride}", "stride")


@dataclass
class Piece(Feature):
    offsets: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))  # (T, 2)
    special: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (T,)
    first_token: int = 0  # index of this window's first text token in the whole text's tokens


class TokenClassification(Task):
    name = "token-classification"
    head = "token-classification"
    Params = TokenClassificationParams

    def __call__(self, inputs: str | list[str], **params: Any):
        inputs, single = self.batch_of(inputs)
        results = self.run(inputs, **params)
        return results[0] if single else results

    def featurize(self, inputs, p):
        texts = [self.check_text(t, f"inputs[{i}]") for i, t in enumerate(inputs)]
        prefix, suffix = self.tokenizer.single_prefix, self.tokenizer.single_suffix
        room = self.max_length - len(prefix) - len(suffix)
        if p.aggregation_strategy == "none":
            stride = 0  # token-level results: windows side by side, each token labelled once
        else:
            stride = p.stride if p.stride is not None else room // 4
            if stride >= room:
                raise InputError(f"stride ({stride}) must be smaller than the window ({room} tokens)", "stride")
        with_types = self.model.cfg.type_vocab_size > 0
        features, owners = [], []
        for i, enc in enumerate(self.tokenizer.encode(texts, add_special_tokens=False)):
            ids = np.asarray(enc.ids, dtype=np.int64)
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            for a, b in windows(len(ids), room, stride):
                row = np.concatenate([prefix, ids[a:b], suffix]).astype(np.int64)
                special = np.zeros(len(row), dtype=bool)
                special[: len(prefix)] = special[len(row) - len(suffix):] = True
                offs = np.zeros((len(row), 2), dtype=np.int64)
                offs[len(prefix): len(prefix) + b - a] = offsets[a:b]
                features.append(Piece(row, np.zeros_like(row) if with_types else None, offs, special, a))
                owners.append(i)
        return features, owners

    def decode(self, inputs, features, owners, outputs, p):
        cfg = self.model.cfg
        id2label = cfg.id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        tok = self.tokenizer
        per_text: list[list[tuple[Piece, np.ndarray]]] = [[] for _ in inputs]
        for f, i, out in zip(features, owners, outputs):
            per_text[i].append((f, out))
        results = []
        for text, rows in zip(inputs, per_text):
            common = dict(id2label=id2label, aggregation_strategy=p.aggregation_strategy,
                          ignore_labels=p.ignore_labels, id_to_token=tok.id_to_token,
                          tokens_to_string=tok.rust.decoder.decode if tok.rust.decoder else None,
                          decode=lambda ids: tok.decode(ids), unk_token_id=tok.unk_token_id,
                          word_aware=bool(tok.continuing_subword_prefix))
            wins = [TokenWindow(f.input_ids, out, f.offsets, f.special) for f, out in rows]
            if p.aggregation_strategy == "none" and len(wins) > 1:
                # Side-by-side windows: label each alone, with `index` into the whole text's tokens.
                entities = []
                for (f, _), w in zip(rows, wins):
                    for e in decode_entities(text, [w], **common):
                        e["index"] += f.first_token
                        entities.append(e)
            else:
                entities = decode_entities(text, wins, **common)
            results.append(entities)
        return results
