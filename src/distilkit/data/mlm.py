"""Masked-LM data for general distillation: token-id shards on disk and the 80/10/10 masking.

Text is tokenized once into memory-mapped shards (`ids.bin` of uint16/uint32 token ids plus
`offsets.npy` of sequence boundaries), so a corpus larger than RAM can be trained on. Masking picks
15% of the real (non-special) tokens, uniformly or, as in DistilBERT, with probabilities smoothed
by token frequency, and replaces 80% of them with the mask token, 10% with a random token, 10%
unchanged. Labels are -100 everywhere else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

IGNORE = -100


def build_shards(texts: Iterable[str], tokenizer, out_dir: str | Path, max_length: int = 128,
                 batch_size: int = 1024) -> Path:
    """Tokenize `texts` (with special tokens, cut to `max_length`) into `out_dir`. Streams: RAM
    holds one batch of texts at a time. Returns out_dir; `meta.json` records counts and dtype."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max else np.uint32
    prefix, suffix = tokenizer.single_prefix, tokenizer.single_suffix
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text")
    lengths: list[int] = []
    with open(out / "ids.bin", "wb") as f:
        batch: list[str] = []

        def flush() -> None:
            for enc in tokenizer.encode(batch, add_special_tokens=False):
                ids = enc.ids
                # Long texts become several sequences rather than being cut short.
                for start in range(0, max(len(ids), 1), room):
                    piece = prefix + ids[start:start + room] + suffix
                    if len(piece) > len(prefix) + len(suffix):
                        f.write(np.asarray(piece, dtype=dtype).tobytes())
                        lengths.append(len(piece))
            batch.clear()

        for text in texts:
            if text and text.strip():
                batch.append(text)
                if len(batch) >= batch_size:
                    flush()
        if batch:
            flush()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(out / "offsets.npy", offsets)
    (out / "meta.json").write_text(json.dumps({"sequences": len(lengths), "tokens": int(offsets[-1]),
                                               "dtype": np.dtype(dtype).name, "max_length": max_length}))
    return out


class TokenShards:
    """Read-only view of `build_shards` output: `shards[i]` is sequence i as int64 ids."""

    def __init__(self, path: str | Path):
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        self.ids = np.memmap(path / "ids.bin", dtype=np.dtype(meta["dtype"]), mode="r")
        self.offsets = np.load(path / "offsets.npy")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.ids[self.offsets[i]:self.offsets[i + 1]], dtype=np.int64)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def token_counts(self, vocab_size: int) -> np.ndarray:
        """How often each id occurs (for frequency-smoothed masking), read in chunks."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for start in range(0, len(self.ids), 1 << 24):
            counts += np.bincount(self.ids[start:start + (1 << 24)], minlength=vocab_size)[:vocab_size]
        return counts


def length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                           group: int = 100) -> Iterator[np.ndarray]:
    """Shuffled batches of similar-length sequences: shuffle, sort within groups of
    `group` batches, then shuffle the batches (less padding, still random)."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    for i in rng.permutation(len(batches)):
        yield batches[i]


def smoothed_token_probs(counts: np.ndarray, special_ids: Iterable[int], smoothing: float = 0.7) -> np.ndarray:
    """DistilBERT's masking weights: counts ** -smoothing (rare tokens masked more often)."""
    probs = np.maximum(counts, 1).astype(np.float64) ** -smoothing
    probs[list(special_ids)] = 0.0
    return probs


def mask_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, special_ids: Iterable[int], mask_id: int,
                vocab_size: int, rng: np.random.Generator, mlm_probability: float = 0.15,
                token_probs: np.ndarray | None = None, mask_ratio: float = 0.8,
                random_ratio: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) ids -> (masked ids, labels). Special tokens and padding are never chosen.

    Without `token_probs` every real token is chosen with probability `mlm_probability`; with
    them, exactly ceil(mlm_probability * n_real) positions are drawn without replacement with
    weights token_probs[id], as DistilBERT's distiller does.
    """
    ids = input_ids.copy()
    candidates = attention_mask.astype(bool) & ~np.isin(ids, list(special_ids))
    if token_probs is None:
        chosen = candidates & (rng.random(ids.shape) < mlm_probability)
    else:
        flat = np.flatnonzero(candidates)
        n = min(len(flat), math.ceil(mlm_probability * len(flat)))
        weights = token_probs[ids.ravel()[flat]]
        chosen = np.zeros(ids.size, dtype=bool)
        if n and weights.sum() > 0:
            chosen[rng.choice(flat, size=n, replace=False, p=weights / weights.sum())] = True
        chosen = chosen.reshape(ids.shape)
    labels = np.where(chosen, input_ids, IGNORE)
    action = rng.random(ids.shape)
    ids[chosen & (action < mask_ratio)] = mask_id
    swap = chosen & (action >= mask_ratio) & (action < mask_ratio + random_ratio)
    ids[swap] = rng.integers(0, vocab_size, size=int(swap.sum()))
    return ids, labels
