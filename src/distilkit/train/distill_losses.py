"""The DistilBERT losses, as pure functions of tensors.

General distillation: L = a_ce * T^2 * KL(softmax(t/T) || softmax(s/T)) + a_mlm * MLM
+ a_cos * (1 - cos(h_s, h_t)), each term over non-padding positions only. Task distillation:
a_task * task loss + a_ce * T^2 * KL on the task logits (QA: the mean of the start and end terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def soft_target_kl(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over rows.

    student, teacher: (..., C) logits; mask: (...) bool, rows to keep (e.g. non-padding tokens).
    The T^2 keeps the gradient scale independent of the temperature (Hinton et al.).
    """
    if mask is not None:
        student, teacher = student[mask], teacher[mask]
    student, teacher = student.reshape(-1, student.size(-1)), teacher.reshape(-1, teacher.size(-1))
    if student.numel() == 0:
        return student.sum() * 0.0
    log_p_s = F.log_softmax(student.float() / temperature, dim=-1)
    p_t = F.softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


def hidden_cosine(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens of 1 - cos(h_s, h_t). student, teacher: (B, T, dim); mask: (B, T)."""
    keep = mask.bool()
    s, t = student[keep].float(), teacher[keep].float()
    if s.numel() == 0:
        return student.sum() * 0.0
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def masked_lm(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the masked positions. logits (N, V) for the N rows of labels != -100, or
    (..., V) aligned with labels (...)."""
    if logits.dim() == 2 and labels.dim() != 1:
        labels = labels[labels != IGNORE]
    if not (labels != IGNORE).any():  # a batch with nothing masked (short texts): no MLM signal
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)


def span_kl(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """QA task distillation: the mean of the start and end soft-target terms.

    student, teacher: (B, T, 2) span logits; mask: (B, T) positions to keep in the softmax
    (padding excluded: its logits would otherwise take probability mass).
    """
    if mask is not None:
        fill = torch.finfo(torch.float32).min
        keep = mask.bool()[..., None]
        student = student.float().masked_fill(~keep, fill)
        teacher = teacher.float().masked_fill(~keep, fill)
    terms = [soft_target_kl(student[..., k], teacher[..., k], temperature) for k in (0, 1)]
    return (terms[0] + terms[1]) / 2
