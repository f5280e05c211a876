"""Official evaluation metrics as pure Python/numpy functions.

SQuAD v1.1/v2.0 (``squad``), seqeval-style entity F1 (``entity``), classification
accuracy/macro-F1 (``classification``) and fill-mask top-k / pseudo-perplexity
(``fill_mask``). Nothing here imports torch or a model.
"""

from distilkit.metrics.classification import accuracy, classification_report, macro_f1
from distilkit.metrics.entity import entity_scores, get_entities
from distilkit.metrics.fill_mask import pseudo_perplexity, topk_accuracy
from distilkit.metrics.squad import (
    SquadExample,
    compute_exact,
    compute_f1,
    get_tokens,
    iter_examples,
    load_squad,
    normalize_answer,
    squad_v1,
    squad_v2,
)

__all__ = [
    "SquadExample",
    "accuracy",
    "classification_report",
    "compute_exact",
    "compute_f1",
    "entity_scores",
    "get_entities",
    "get_tokens",
    "iter_examples",
    "load_squad",
    "macro_f1",
    "normalize_answer",
    "pseudo_perplexity",
    "squad_v1",
    "squad_v2",
    "topk_accuracy",
]
