"""zero-shot-classification: an NLI model scores "sequence entails hypothesis" for each candidate
label, with the transformers zero-shot pipeline's semantics: the hypothesis is
`hypothesis_template.format(label)`, the entailment label is found among the config's label names,
single-label scores are a softmax of the entailment logits over the labels, multi-label ones a
softmax of entailment against contradiction per label. A sequence's hypotheses run in one batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Task
from .cost import Cost, text_tokens
from .pairs import pair_features, softmax


@dataclass
class ZeroShotParams:
    candidate_labels: list[str] | str | None = None  # a list, or one string of comma-separated labels
    hypothesis_template: str = "This example is {}."
    multi_label: bool = False
    truncation: bool = True  # cut the sequence (never the hypothesis) to the model's limit, as transformers does
    labels: list[str] = field(default_factory=list, init=False)  # candidate_labels, parsed

    def __post_init__(self):
        raw = self.candidate_labels
        if raw is None:  # may be given per call; featurize insists
            return
        items = [x.strip() for x in raw.split(",")] if isinstance(raw, str) else list(raw)
        for i, label in enumerate(items):
            if not isinstance(label, str) or not label.strip():
                raise InputError(f"candidate_labels[{i}] must be a non-empty string, got {label!r}",
                                 f"candidate_labels[{i}]")
        if not items:
            raise InputError("candidate_labels is empty", "candidate_labels")
        if len(set(items)) != len(items):
            raise InputError("candidate_labels has duplicates", "candidate_labels")
        if self.hypothesis_template.format(items[0]) == self.hypothesis_template:
            raise InputError(f"hypothesis_template {self.hypothesis_template!r} has no {{}} for the label",
                             "hypothesis_template")
        self.labels = items


class ZeroShotClassification(Task):
    name = "zero-shot-classification"
    head = "sequence-classification"
    Params = ZeroShotParams

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entailment_id = entailment_id(self.model.cfg.id2label)

    warmup_params = {"candidate_labels": ["weather", "travel"]}  # what a server warms up with

    def warmup_inputs(self) -> list:
        return ["The model warms up in Paris before the first request."]

    def __call__(self, sequences: Any, candidate_labels: Any = None, **params: Any):
        """One text -> {sequence, labels, scores} (labels sorted by score); a list -> one per text."""
        if candidate_labels is not None:
            params["candidate_labels"] = candidate_labels
        single = isinstance(sequences, str)
        if not single and (not isinstance(sequences, (list, tuple)) or not sequences):
            raise InputError("sequences must be a string or a non-empty list of strings", "inputs")
        results = self.run([sequences] if single else list(sequences), **params)
        return results[0] if single else results

    def featurize(self, inputs, p):
        if p.candidate_labels is None:
            raise InputError("candidate_labels is required: the labels to choose from", "candidate_labels")
        hypotheses = [p.hypothesis_template.format(label) for label in p.labels]
        pairs, fields, owners = [], [], []
        for i, x in enumerate(inputs):
            text = self.check_text(x, f"inputs[{i}]")
            pairs += [(text, h) for h in hypotheses]
            fields += [f"inputs[{i}]"] * len(hypotheses)
            owners += [i] * len(hypotheses)
        return pair_features(self, pairs, fields, "only_first" if p.truncation else None), owners

    def cost(self, inputs, p):
        """One (text, hypothesis) pair through the model per candidate label; an answer lists them all."""
        labels = p.labels or ["?"]
        hypothesis = max(text_tokens(p.hypothesis_template.format(label)) for label in labels)
        per_input = tuple(len(labels) * (min(text_tokens(x), self.max_length) + hypothesis + 3) for x in inputs)
        longest = max(len(label) for label in labels)
        return Cost(per_input, len(inputs) * len(labels),
                    sum(len(x) if isinstance(x, str) else 8 for x in inputs) + len(inputs) * len(labels) * (30 + longest),
                    "parameters.candidate_labels")

    def decode(self, inputs, features, owners, outputs, p):
        n = len(p.labels)
        logits = np.stack(outputs).reshape(len(inputs), n, -1)  # (sequences, labels, classes); owners are in order
        return [zero_shot_scores(text, seq_logits, p.labels, self.entailment_id, p.multi_label)
                for text, seq_logits in zip(inputs, logits)]


def entailment_id(id2label: dict[int, str]) -> int:
    """The class whose name starts with "entail" (any case), as transformers finds it."""
    for i, name in sorted(id2label.items()):
        if name.lower().startswith("entail"):
            return i
    raise ValueError(f"zero-shot classification needs an NLI model with an entailment label; this one has "
                     f"{', '.join(id2label.values()) or 'no label names'} (config.json id2label)")


def zero_shot_scores(sequence: str, logits: np.ndarray, labels: list[str], entail: int, multi_label: bool) -> dict:
    """(labels, classes) NLI logits of one sequence -> {sequence, labels, scores}, best first."""
    logits = logits.astype(np.float32)
    if multi_label or len(labels) == 1:
        contradiction = -1 if entail == 0 else 0
        scores = softmax(logits[:, [contradiction, entail]])[:, 1]
    else:
        scores = softmax(logits[:, entail])
    order = list(reversed(scores.argsort()))
    return {"sequence": sequence, "labels": [labels[i] for i in order], "scores": [float(scores[i]) for i in order]}
