"""feature-extraction: the encoder's last hidden state per token (special tokens included), as the
transformers feature-extraction pipeline returns it, or one pooled vector per text (`pooling`,
`normalize`: the convention of transformers.js). Any checkpoint of the family runs as its bare
encoder; a task head it carries is not loaded. Pooling is a pure function of arrays (`pool`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..batching import Feature
from ..errors import InputError
from .base import Task
from .cost import Cost, text_tokens

POOLING = ("none", "mean", "cls", "max", "mean_sqrt_len")


@dataclass
class FeatureExtractionParams:
    pooling: str = "none"  # none: (T, dim) per text; mean | cls | max | mean_sqrt_len: (dim,)
    normalize: bool = False  # unit length (L2) vectors; with pooling none, each token's vector
    truncation: bool = False  # cut texts over the limit instead of refusing them
    max_length: int | None = None  # tokens kept by truncation (default: the model's limit)

    def __post_init__(self):
        if self.pooling not in POOLING:
            raise InputError(f"pooling must be one of {', '.join(POOLING)}, got {self.pooling!r}", "pooling")
        if self.max_length is not None and self.max_length < 2:
            raise InputError(f"max_length must be at least 2, got {self.max_length}", "max_length")


def pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    """(T, dim) hidden states of one unpadded text -> (dim,) by `pooling` (or (T, dim) for "none").
    The same reductions as sentence-transformers' Pooling module over the attended tokens."""
    if pooling == "none":
        return hidden
    if pooling == "cls":
        return hidden[0]
    if pooling == "max":
        return hidden.max(axis=0)
    total = hidden.sum(axis=0, dtype=np.float32)
    return total / np.float32(len(hidden) if pooling == "mean" else np.sqrt(len(hidden)))


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis, as torch.nn.functional.normalize does (norms floored at 1e-12)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)


class FeatureExtraction(Task):
    name = "feature-extraction"
    head = None  # type: ignore[assignment]
    Params = FeatureExtractionParams

    def __call__(self, inputs: Any, **params: Any):
        """One text -> what the transformers pipeline returns for it: [[token vectors]] (a batch
        of one), or a plain vector when pooled. A list -> one such result per text."""
        single = isinstance(inputs, str)
        results = self.run([inputs] if single else self._as_list(inputs), **params)
        pooled = self.params(**params).pooling != "none"
        shaped = [r.tolist() if pooled else [r.tolist()] for r in results]
        return shaped[0] if single else shaped

    @staticmethod
    def _as_list(inputs: Any) -> list:
        if not isinstance(inputs, (list, tuple)):
            raise InputError(f"inputs must be a string or a list of strings, got {type(inputs).__name__}", "inputs")
        if not inputs:
            raise InputError("inputs is an empty list", "inputs")
        return list(inputs)

    def cost(self, inputs, p):
        """Unpooled, the answer holds every token's vector: about 12 bytes of JSON per float."""
        dim = self.model.cfg.dim
        tokens = tuple(min(text_tokens(x), self.limit(p)) + 2 for x in inputs)
        floats = len(inputs) * dim if p.pooling != "none" else sum(tokens) * dim
        return Cost(tokens, len(inputs), 12 * floats)

    def limit(self, p) -> int:
        """Tokens a text may have (special tokens included)."""
        return min(p.max_length or self.max_length, self.max_length)

    def featurize(self, inputs, p):
        texts = [self.check_text(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        limit = self.limit(p)
        features = []
        for i, enc in enumerate(self.tokenizer.encode(texts)):
            ids = np.asarray(enc.ids, dtype=np.int64)
            types = np.asarray(enc.type_ids, dtype=np.int64)
            if len(ids) > limit:
                if not p.truncation:
                    self.check_length(len(ids), f"inputs[{i}]", " (pass truncation=true to cut it)")
                # [CLS] + the first limit - 2 pieces + [SEP]: what the tokenizers' truncation keeps.
                keep = np.r_[0: limit - 1, len(ids) - 1]
                ids, types = ids[keep], types[keep]
            features.append(Feature(ids, types if self.model.cfg.type_vocab_size else None))
        return features, list(range(len(features)))

    def decode(self, inputs, features, owners, outputs, p):
        """One float32 array per text: (T, dim) unpooled, (dim,) pooled."""
        vectors = [pool(h, p.pooling) for h in outputs]
        return [normalize(v) if p.normalize else v.astype(np.float32, copy=False) for v in vectors]

    def count_tokens(self, texts: list[str], **params: Any) -> list[int]:
        """Tokens each text takes in the model (after truncation): usage counts."""
        p = self.params(**params)
        return [len(f.input_ids) for f in self.featurize(list(texts), p)[0]]
