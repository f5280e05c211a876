"""text-ranking: a cross-encoder scores (query, document) pairs, as sentence-transformers'
CrossEncoder does (a single-logit head through a sigmoid, or the probability of a chosen label),
and `rank` sorts them. `run` takes {"query", "text"} pairs, so a server batches the documents of
many queries together; `p(query, documents, top_k=...)` gives the sorted [{index, score, text?}]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .base import Task
from .pairs import pair_features, softmax


@dataclass
class TextRankingParams:
    activation: str | None = None  # sigmoid | none; default: the checkpoint's (sigmoid for one logit)
    label: str | None = None  # a head with several labels: score the probability of this one
    truncation: bool = True  # cut the longer text of a pair to the model's limit, as CrossEncoder does

    def __post_init__(self):
        if self.activation not in (None, "sigmoid", "none"):
            raise InputError(f"activation must be sigmoid or none, got {self.activation!r}", "activation")


class TextRanking(Task):
    name = "text-ranking"
    head = "sequence-classification"
    Params = TextRankingParams

    def __call__(self, query: str, documents: Sequence[str], top_k: int | None = None, return_text: bool = False,
                 **params: Any) -> list[dict]:
        if isinstance(documents, str) or not isinstance(documents, (list, tuple)) or not documents:
            raise InputError("documents must be a non-empty list of strings", "documents")
        scores = self.run([{"query": query, "text": d} for d in documents], **params)
        return rank(scores, documents, top_k, return_text)

    def featurize(self, inputs, p):
        pairs, fields = [], []
        for i, x in enumerate(inputs):
            if not isinstance(x, dict) or "query" not in x or "text" not in x:
                raise InputError(f"inputs[{i}] must be an object with query and text", f"inputs[{i}]")
            pairs.append((self.check_text(x["query"], "query"), self.check_text(x["text"], f"texts[{i}]")))
            fields.append(f"texts[{i}]")
        return pair_features(self, pairs, fields, "longest_first" if p.truncation else None), list(range(len(pairs)))

    def decode(self, inputs, features, owners, outputs, p):
        cfg = self.model.cfg
        logits = np.stack(outputs).astype(np.float32)  # (pairs, labels)
        if p.label is not None:
            if p.label not in cfg.label2id:
                raise InputError(f"label {p.label!r} is not one of the model's: {', '.join(cfg.label2id)}", "label")
            return [float(s) for s in softmax(logits)[:, cfg.label2id[p.label]]]
        if logits.shape[1] != 1:
            raise InputError(f"this model has {logits.shape[1]} labels ({', '.join(cfg.label2id)}): pass label= "
                             f"to score the probability of one", "label")
        activation = p.activation or default_activation(cfg.extra)
        x = logits[:, 0]
        return [float(s) for s in (1.0 / (1.0 + np.exp(-x)) if activation == "sigmoid" else x)]


def default_activation(extra: dict) -> str:
    """CrossEncoder's default for a one-logit head: the activation its config names, else sigmoid."""
    name = (extra.get("sentence_transformers") or {}).get("activation_fn") or ""
    return "none" if name.endswith("Identity") else "sigmoid"


def rank(scores: Sequence[float], texts: Sequence[str], top_k: int | None = None, return_text: bool = False) -> list[dict]:
    """Scores of texts[i] -> [{index, score, text?}], best first (ties keep input order), cut to top_k."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a positive integer, got {top_k!r}", "top_k")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_k]
    return [{"index": i, "score": float(scores[i]), **({"text": texts[i]} if return_text else {})} for i in order]
