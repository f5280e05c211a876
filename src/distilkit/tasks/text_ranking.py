"""text-ranking: a cross-encoder scores (query, document) pairs, as sentence-transformers'
CrossEncoder does (a single-logit head through a sigmoid, or the probability of a chosen label),
and `rank` sorts them. `run` takes {"query", "texts"} items and gives each its sorted
[{index, score, text?}]; all the pairs of all the items go through the model together, so a
server batches the documents of many queries. `p(query, documents, top_k=...)` ranks one query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from .base import Task
from .cost import Cost, text_tokens
from .pairs import pair_features, softmax


@dataclass
class TextRankingParams:
    top_k: int | None = None  # texts returned per query, best first; None: all
    return_text: bool = False  # include each text in its result
    activation: str | None = None  # sigmoid | none; default: the checkpoint's (sigmoid for one logit)
    label: str | None = None  # a head with several labels: score the probability of this one
    truncation: bool = True  # cut the longer text of a pair to the model's limit, as CrossEncoder does

    def __post_init__(self):
        if self.activation not in (None, "sigmoid", "none"):
            raise InputError(f"activation must be sigmoid or none, got {self.activation!r}", "activation")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be at least 1 or null, got {self.top_k}", "top_k")


class TextRanking(Task):
    name = "text-ranking"
    head = "sequence-classification"
    Params = TextRankingParams

    def warmup_inputs(self) -> list:  # what a server warms up with
        return [{"query": "What warms up?", "texts": ["The model warms up before the first request.", "Paris"]}]

    def __call__(self, query: str, documents: Sequence[str], **params: Any) -> list[dict]:
        """[{index, score, text?}] of `documents` against `query`, best first (top_k=, return_text=)."""
        if isinstance(documents, str) or not isinstance(documents, (list, tuple)) or not documents:
            raise InputError("documents must be a non-empty list of strings", "texts")
        return self.run([{"query": query, "texts": list(documents)}], **params)[0]

    def featurize(self, inputs, p):
        pairs, fields, owners = [], [], []
        for i, x in enumerate(inputs):
            where = f"inputs[{i}]." if len(inputs) > 1 else ""  # one query (the usual case): "query", "texts[3]"
            if not isinstance(x, dict) or "query" not in x or "texts" not in x:
                raise InputError(f"inputs[{i}] must be an object with query and texts", f"inputs[{i}]")
            texts = x["texts"]
            if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
                raise InputError(f"{where}texts must be a non-empty list of strings", f"{where}texts")
            query = self.check_text(x["query"], f"{where}query")
            for j, text in enumerate(texts):
                pairs.append((query, self.check_text(text, f"{where}texts[{j}]")))
                fields.append(f"{where}texts[{j}]")
                owners.append(i)
        return pair_features(self, pairs, fields, "longest_first" if p.truncation else None), owners

    def cost(self, inputs, p):
        """One (query, text) pair through the model per text; an answer ranks them all (with the
        texts themselves when return_text)."""
        per_input, items, size = [], 0, 0
        for x in inputs:
            texts = x.get("texts") if isinstance(x, dict) else None
            texts = texts if isinstance(texts, list) else [""]
            query = text_tokens(x.get("query")) if isinstance(x, dict) else 1
            per_input.append(sum(min(query + text_tokens(t), self.max_length) + 4 for t in texts))
            shown = len(texts) if p.top_k is None else min(p.top_k, len(texts))
            items += shown
            size += 40 * shown + (sum(len(t) for t in texts if isinstance(t, str)) if p.return_text else 0)
        return Cost(tuple(per_input), items, size, "texts")

    def decode(self, inputs, features, owners, outputs, p):
        scores = self.scores(np.stack(outputs).astype(np.float32), p)
        results, start = [], 0
        for x in inputs:  # owners run in input order, len(texts) pairs each
            n = len(x["texts"])
            results.append(rank(scores[start: start + n], x["texts"], p.top_k, p.return_text))
            start += n
        return results

    def scores(self, logits: np.ndarray, p) -> list[float]:
        """(pairs, labels) logits -> one relevance score per pair."""
        cfg = self.model.cfg
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
