"""Task losses, as functions of (model, batch) -> (loss, logs) that the training loop calls.

The model computes no losses (it returns logits); each function here runs the forward pass and
takes the loss its task trains with. The logits-level pieces (`span_loss`, `token_loss`) are
separate so that distillation can add its own terms to the same targets.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..data.collate import IGNORE_INDEX

LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, float]]]


def forward(model: nn.Module, batch: dict[str, Tensor], **kwargs):
    """The model's forward on a training batch (targets are not model inputs)."""
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), **kwargs)


def sequence_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (B, C) logits against (B,) class ids."""
    return F.cross_entropy(logits.float(), labels)


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (B, T, C) logits against (B, T) ids, IGNORE_INDEX positions skipped."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def span_loss(logits: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Mean of the start and end cross-entropies of (B, T, 2) span logits; positions outside the
    sequence are clamped to T and ignored, as transformers' QA models do."""
    T = logits.size(1)
    start_logits, end_logits = logits.float().unbind(-1)  # (B, T) each
    start = start.clamp(0, T)
    end = end.clamp(0, T)
    return (F.cross_entropy(start_logits, start, ignore_index=T) + F.cross_entropy(end_logits, end, ignore_index=T)) / 2


def classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    loss = sequence_loss(forward(model, batch).logits, batch["labels"])
    return loss, {}


def token_classification_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    loss = token_loss(forward(model, batch).logits, batch["labels"])
    return loss, {}


def question_answering_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
    loss = span_loss(forward(model, batch).logits, batch["start_positions"], batch["end_positions"])
    return loss, {}


# task name (as the pipelines name them) -> its loss
TASK_LOSSES: dict[str, LossFn] = {
    "text-classification": classification_loss,
    "token-classification": token_classification_loss,
    "question-answering": question_answering_loss,
}
