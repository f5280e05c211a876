"""fill-mask: the top-k tokens for each mask, as the transformers fill-mask pipeline returns them.

Only the mask positions go through the vocabulary projection (the reference projects every
position); the softmax, top-k and `sequence` re-decoding follow the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..batching import Feature
from ..errors import InputError
from .base import Task


@dataclass
class FillMaskParams:
    top_k: int = 5
    targets: list | str | None = None
    truncation: bool = False  # cut texts over the model's limit instead of refusing them

    def __post_init__(self):
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {self.top_k}", "top_k")
        if isinstance(self.targets, str):
            self.targets = [self.targets]


class FillMask(Task):
    name = "fill-mask"
    head = "masked-lm"
    Params = FillMaskParams

    def __call__(self, inputs: str | list[str], **params: Any):
        inputs, single = self.batch_of(inputs)
        results = self.run(inputs, **params)
        # The reference unwraps a one-element list, and gives one list per mask with several masks.
        return results[0] if single or len(results) == 1 else results

    def featurize(self, inputs, p):
        if self.tokenizer.mask_token_id is None:
            raise InputError("this tokenizer has no mask token; fill-mask needs a masked-LM tokenizer")
        texts = [self.check_text(t, f"inputs[{i}]") for i, t in enumerate(inputs)]
        features = []
        for i, enc in enumerate(self.tokenizer.encode(texts)):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if len(ids) > self.max_length:
                if not p.truncation:
                    self.check_length(len(ids), f"inputs[{i}]", " (pass truncation=true to cut it)")
                ids = np.concatenate([ids[: self.max_length - 1], ids[-1:]])  # keep the final [SEP]
            if not (ids == self.tokenizer.mask_token_id).any():
                raise InputError(f"No mask_token ({self.tokenizer.mask_token}) found in inputs[{i}]", f"inputs[{i}]")
            types = np.zeros_like(ids) if self.model.cfg.type_vocab_size else None
            features.append(Feature(ids, types))
        return features, list(range(len(features)))

    def positions(self, batch):
        return np.flatnonzero(batch["input_ids"] == self.tokenizer.mask_token_id)

    def target_ids(self, targets: list) -> np.ndarray | None:
        if targets is None:
            return None
        ids = []
        for t in targets:
            if not isinstance(t, str):
                raise InputError(f"targets must be strings, got {type(t).__name__}", "targets")
            tid = self.tokenizer.token_to_id(t)
            if tid is None:  # like the reference: the first token of the target's tokenization
                enc = self.tokenizer.encode([t], add_special_tokens=False)[0]
                if not enc.ids:
                    continue
                tid = enc.ids[0]
            ids.append(tid)
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise InputError("At least one target must be provided when passed.", "targets")
        return np.asarray(ids, dtype=np.int64)

    def decode(self, inputs, features, owners, outputs, p):
        targets = self.target_ids(p.targets)
        top_k = min(p.top_k, len(targets)) if targets is not None else p.top_k
        special = {self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id} - {None}
        mask_id = self.tokenizer.mask_token_id
        results = []
        for feature, logits in zip(features, outputs):
            ids = feature.input_ids
            mask_pos = np.flatnonzero(ids == mask_id)
            probs = _softmax(logits)  # (M, V)
            if targets is not None:
                probs = probs[:, targets]
            top = _top_k(probs, min(top_k, probs.shape[1]))  # (M, k)
            single = len(mask_pos) == 1
            rows, seqs = [], []
            for m, pos in enumerate(mask_pos):
                for j in top[m]:
                    token = int(targets[j]) if targets is not None else int(j)
                    filled = ids.copy()
                    filled[pos] = token
                    if not single:  # keep the other masks visible, drop [CLS]/[SEP] (the reference keeps them)
                        filled = filled[~np.isin(filled, list(special))]
                    seqs.append(filled.tolist())
                    rows.append((m, float(probs[m, j]), token))
            decoded = self.tokenizer.rust.decode_batch(seqs, skip_special_tokens=single)
            token_strs = self.tokenizer.rust.decode_batch([[t] for _, _, t in rows], skip_special_tokens=False)
            per_mask: list[list[dict]] = [[] for _ in mask_pos]
            for (m, score, token), seq, tstr in zip(rows, decoded, token_strs):
                per_mask[m].append({"score": score, "token": token, "token_str": self.tokenizer.cleanup(tstr),
                                    "sequence": self.tokenizer.cleanup(seq)})
            results.append(per_mask[0] if single else per_mask)
        return results


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top_k(x: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest values of each row, largest first. (M, k)"""
    part = np.argpartition(-x, k - 1, axis=1)[:, :k] if k < x.shape[1] else np.tile(np.arange(x.shape[1]), (len(x), 1))
    order = np.argsort(-np.take_along_axis(x, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
