"""Group variable-length features into padded batches under a token budget.

Features are sorted by length so that a batch wastes little on padding; `plan` returns index
groups and callers put results back in input order through those indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Padded tokens per forward pass. On a CPU, batches past ~2k tokens run slower, not faster: the
# activations (tokens x ffn_dim x 4 bytes) leave the L3 cache and the element-wise passes become
# memory-bound (measured: 64 SQuAD questions, 1024 -> 6.0 s, 8192 -> 10.0 s). GPUs want big batches.
DEFAULT_MAX_TOKENS = {"cpu": 1024, "cuda": 16384}  # tasks plan batches under these; Runtime slices bigger CPU batches
# bf16 on a CPU: activations take half the bytes, so twice the tokens fit the same cache
# (benchmarks/token_budget.py, 256 SQuAD questions: 1024 -> 40.1 q/s, 1536 -> 54.5, 2048 -> 58.4,
# 3072 -> 58.9; fp32 and int8 gained 0-7% from 2048 over two runs, within the host's noise).
CPU_BF16_MAX_TOKENS = 2048
DEFAULT_MAX_BATCH = 64


def default_max_tokens(device_type: str, mode: str = "fp32") -> int | None:
    """Padded tokens per forward pass for a device and run mode; None for a device we have not measured."""
    if device_type == "cpu" and mode == "bf16":
        return CPU_BF16_MAX_TOKENS
    return DEFAULT_MAX_TOKENS.get(device_type)


@dataclass
class Feature:
    """One model input row: a whole text or one window of it."""

    input_ids: np.ndarray  # (T,) int64
    token_type_ids: np.ndarray | None = None  # (T,) or None when the model has no token types


def plan(lengths: Sequence[int], max_tokens: int = DEFAULT_MAX_TOKENS["cpu"], max_batch: int = DEFAULT_MAX_BATCH) -> list[list[int]]:
    """Index groups, longest first, each with (rows x longest row) <= max_tokens and <= max_batch rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # the first row is the longest
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(features: Sequence[Feature], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad a group of features: input_ids, attention_mask and (if any) token_type_ids, (B, T)."""
    T = max(len(f.input_ids) for f in features)
    B = len(features)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    types = np.zeros((B, T), dtype=np.int64) if features[0].token_type_ids is not None else None
    for r, f in enumerate(features):
        n = len(f.input_ids)
        ids[r, :n] = f.input_ids
        mask[r, :n] = 1
        if types is not None:
            types[r, :n] = f.token_type_ids
    out = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = types
    return out
