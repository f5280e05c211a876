"""text-classification: labels and scores for whole texts (or text pairs), in the shapes the
transformers text-classification pipeline returns, including its legacy single-label form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..batching import Feature
from ..errors import InputError
from .base import Task

_UNSET: Any = ""  # the reference's sentinel: top_k=None means "all labels", absent means legacy shape


@dataclass
class TextClassificationParams:
    top_k: int | None = 1
    function_to_apply: str | None = None  # softmax | sigmoid | none; default from the config
    truncation: bool = False  # cut texts over the model's limit instead of refusing them
    legacy: bool = True  # internal: top_k was not given, so one {label, score} per input

    def __post_init__(self):
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be at least 1 or null, got {self.top_k}", "top_k")
        if self.function_to_apply is not None:
            self.function_to_apply = self.function_to_apply.lower()
            if self.function_to_apply not in ("softmax", "sigmoid", "none"):
                raise InputError(
                    f"function_to_apply must be softmax, sigmoid or none, got {self.function_to_apply!r}",
                    "function_to_apply")


class TextClassification(Task):
    name = "text-classification"
    head = "sequence-classification"
    Params = TextClassificationParams

    def __init__(self, *args, **kwargs):
        if "top_k" in kwargs:
            kwargs["legacy"] = False
        super().__init__(*args, **kwargs)

    def __call__(self, inputs: Any, **params: Any):
        call_legacy = "top_k" not in params
        if "top_k" in params:
            params["legacy"] = False
        items, single = self.batch_of(inputs, (str, dict))
        results = self.run(items, **params)
        if single:
            # The reference returns a list for one plain string unless top_k was passed to the call.
            return [results[0]] if isinstance(inputs, str) and call_legacy else results[0]
        return results

    def featurize(self, inputs, p):
        pairs, singles = [], []
        for i, x in enumerate(inputs):
            if isinstance(x, dict):
                self.check_keys(x, ("text", "text_pair"), f"inputs[{i}]")
                if "text" not in x:
                    raise InputError(f"inputs[{i}] needs a text (and optionally text_pair)", f"inputs[{i}].text")
                pair = x.get("text_pair")
                text = self.check_text(x["text"], f"inputs[{i}].text")
                if pair is not None:
                    pairs.append((i, (text, self.check_text(pair, f"inputs[{i}].text_pair"))))
                    continue
                singles.append((i, text))
            else:
                singles.append((i, self.check_text(x, f"inputs[{i}]")))
        limit = self.max_length if p.truncation else None
        encs: dict[int, Any] = {}
        encs.update(zip([i for i, _ in singles], self.tokenizer.encode([t for _, t in singles], max_length=limit)))
        encs.update(zip([i for i, _ in pairs], self.tokenizer.encode_pairs([t for _, t in pairs], max_length=limit)))
        features = []
        for i in range(len(inputs)):
            ids = np.asarray(encs[i].ids, dtype=np.int64)
            types = np.asarray(encs[i].type_ids, dtype=np.int64)
            self.check_length(len(ids), f"inputs[{i}]", " (pass truncation=true to cut it)")
            features.append(Feature(ids, types if self.model.cfg.type_vocab_size else None))
        return features, list(range(len(features)))

    def decode(self, inputs, features, owners, outputs, p):
        cfg = self.model.cfg
        fn = p.function_to_apply or default_function(cfg.problem_type, cfg.num_labels)
        id2label = cfg.id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        return [scores_to_labels(logits, fn, id2label, p.top_k, p.legacy) for logits in outputs]


def default_function(problem_type: str | None, num_labels: int) -> str:
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def scores_to_labels(logits: np.ndarray, fn: str, id2label: dict[int, str], top_k: int | None, legacy: bool):
    """(C,) logits -> {label, score} (legacy) or a list sorted by score, cut to top_k."""
    x = logits.astype(np.float32)
    if fn == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-x))
    elif fn == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        scores = e / e.sum(axis=-1, keepdims=True)
    else:
        scores = x
    if legacy and top_k == 1:
        return {"label": id2label[int(scores.argmax())], "score": float(scores.max())}
    out = [{"label": id2label[i], "score": float(s)} for i, s in enumerate(scores)]
    if not legacy:
        out.sort(key=lambda d: d["score"], reverse=True)
        if top_k is not None:
            out = out[:top_k]
    return out
