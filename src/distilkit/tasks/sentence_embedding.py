"""sentence-embedding (alias text-embedding): one vector per text, as `SentenceTransformer.encode`.

A sentence-transformers folder says how (modules.json: Transformer -> Pooling -> Normalize;
1_Pooling/config.json; sentence_bert_config.json's max_seq_length); `folder_options` reads it, and
refuses what we would not compute the same way (a Dense layer, an unknown pooling mode, a pooling
dimension that is not the encoder's). Texts past max_seq_length are cut, as sentence-transformers
cuts them. Everything else is feature-extraction's: the same featurize, forward and pooling.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .feature_extraction import FeatureExtraction, FeatureExtractionParams

# sentence-transformers' Pooling flags -> our pooling names.
_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}
_UNSUPPORTED_FLAGS = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
_KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass
class SentenceEmbeddingParams(FeatureExtractionParams):
    truncation: bool = True  # texts past max_length are cut, as sentence-transformers cuts them


def _read(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {file}: {e}") from None


def folder_options(path: str | os.PathLike, dim: int | None = None) -> dict[str, Any]:
    """pooling / normalize / max_length / truncation from a sentence-transformers folder; {} for a
    folder without modules.json. dim: the encoder's width, checked against the pooling config."""
    path = Path(path)
    if not (path / "modules.json").is_file():
        return {}
    modules = _read(path / "modules.json")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in _KNOWN_MODULES]
    if unknown:
        raise ValueError(f"{path}/modules.json has modules distilkit does not compute: {', '.join(unknown)} "
                         f"(it runs Transformer -> Pooling -> Normalize)")
    options: dict[str, Any] = {"normalize": "Normalize" in kinds, "truncation": True}
    pooling = [m for m in modules if m.get("type", "").endswith(".Pooling")]
    if pooling:
        cfg = _read(path / pooling[0]["path"] / "config.json")
        used = [flag for flag in _UNSUPPORTED_FLAGS if cfg.get(flag)]
        modes = [name for flag, name in _POOLING_FLAGS.items() if cfg.get(flag)]
        if used or len(modes) != 1:
            raise ValueError(f"{path / pooling[0]['path']}/config.json: distilkit pools with exactly one of "
                             f"{', '.join(_POOLING_FLAGS)}; this config sets {', '.join(used + modes) or 'none'}")
        width = cfg.get("word_embedding_dimension")
        if dim is not None and width is not None and width != dim:
            raise ValueError(f"{path / pooling[0]['path']}/config.json: word_embedding_dimension is {width}, "
                             f"the encoder's hidden size is {dim}")
        options["pooling"] = modes[0]
    if (path / "sentence_bert_config.json").is_file():
        length = _read(path / "sentence_bert_config.json").get("max_seq_length")
        if isinstance(length, int):
            options["max_length"] = length
    return options


class SentenceEmbedding(FeatureExtraction):
    name = "sentence-embedding"
    Params = SentenceEmbeddingParams
    folder_options = staticmethod(folder_options)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.featurize([], self.params())  # refuse a model folder without pooling at construction

    def featurize(self, inputs, p):
        if p.pooling == "none":
            raise InputError(
                "sentence-embedding needs a pooling (mean, cls, max or mean_sqrt_len): without a sentence-transformers "
                "pooling config in the model folder, pass pooling= (and normalize=) to pipeline()", "pooling")
        return super().featurize(inputs, p)

    def __call__(self, inputs: Any, **params: Any):
        """One text -> its vector as a list of floats; a list -> a list of vectors."""
        single = isinstance(inputs, str)
        results = self.run([inputs] if single else self._as_list(inputs), **params)
        return results[0].tolist() if single else [r.tolist() for r in results]

    def encode(self, sentences: str | Sequence[str], batch_size: int | None = None, normalize: bool | None = None,
               **params: Any) -> np.ndarray:
        """float32 (N, dim) array (or (dim,) for one string), like `SentenceTransformer.encode`.
        batch_size: at most this many texts per forward pass (the token budget may make them fewer)."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else self._as_list(sentences)
        if normalize is not None:
            params["normalize"] = normalize
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}", "batch_size")
        p = self.params(**params)
        features, owners = self.featurize(texts, p)
        vectors = self.decode(texts, features, owners, self.forward(features, max_batch=batch_size), p)
        out = np.stack(vectors).astype(np.float32, copy=False)
        return out[0] if single else out
