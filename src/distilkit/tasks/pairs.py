"""Text pairs -> features, cut as the Hugging Face tokenizers cut them: the pair classification
that zero-shot classification (sequence, hypothesis) and reranking (query, document) run on."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tokenizers import Tokenizer as RustTokenizer

from ..batching import Feature
from ..errors import InputError


def pair_features(task, pairs: Sequence[tuple[str, str]], fields: Sequence[str], strategy: str | None) -> list[Feature]:
    """One feature per (a, b). strategy: the tokenizers' truncation ("only_first": the hypothesis
    stays whole, as transformers' zero-shot pipeline; "longest_first": as sentence-transformers'
    CrossEncoder), or None: a pair over the model's limit is an InputError naming fields[i]."""
    limit = task.max_length
    if strategy is None:
        encs = task.tokenizer.encode_pairs(pairs)
        for i, enc in enumerate(encs):
            task.check_length(len(enc.ids), fields[i], " (pass truncation=true to cut it)")
    else:
        rust = _truncating(task, limit, strategy)
        try:
            encs = rust.encode_batch([tuple(p) for p in pairs], add_special_tokens=True)
        except Exception:  # noqa: BLE001 - the tokenizers' only error here: a pair it cannot cut to the limit
            encs = []
            for i, pair in enumerate(pairs):
                try:
                    encs.append(rust.encode(*pair, add_special_tokens=True))
                except Exception:  # noqa: BLE001 - see above
                    raise InputError(f"{fields[i]}: the second text alone is over the model's limit of {limit} "
                                     f"tokens", fields[i]) from None
    with_types = bool(task.model.cfg.type_vocab_size)
    return [Feature(np.asarray(e.ids, dtype=np.int64), np.asarray(e.type_ids, dtype=np.int64) if with_types else None)
            for e in encs]


def _truncating(task, limit: int, strategy: str) -> RustTokenizer:
    """A copy of the task's tokenizer that truncates (the shared one never does), kept on the task."""
    cache = task.__dict__.setdefault("_truncating", {})
    if (limit, strategy) not in cache:
        rust = RustTokenizer.from_str(task.tokenizer.rust.to_str())
        rust.no_padding()
        rust.enable_truncation(limit, stride=0, strategy=strategy)
        cache[(limit, strategy)] = rust
    return cache[(limit, strategy)]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
