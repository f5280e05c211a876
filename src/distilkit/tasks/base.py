"""The shared task loop: inputs -> features -> length-sorted batches -> runtime -> decoder.

A task subclass says how to turn its inputs into features and model outputs into results; it
never batches, pads or calls the model itself. `run(list, **params)` returns one result per
input (what the server and batch job use); `__call__` adds the Hugging Face pipeline shapes.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence

import numpy as np

from ..batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_TOKENS, Feature, collate, default_max_tokens, plan
from ..errors import InputError
from ..tokenizer import Tokenizer
from .cost import Cost, text_tokens

if typing.TYPE_CHECKING:  # tasks import no torch: an exported ONNX model serves without it
    from ..runtime import Runtime


def build_params(cls: type, values: dict[str, Any], task: str):
    """Validate keyword options against a params dataclass: unknown names and wrong types are
    InputErrors naming the option."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    clean = {}
    for name, value in values.items():
        if name not in fields:
            raise InputError(f"unknown parameter {name!r} for {task}; accepted: {', '.join(sorted(fields))}", name)
        clean[name] = _coerce(name, value, hints[name])
    try:
        return cls(**clean)
    except InputError:
        raise
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None


def _coerce(name: str, value: Any, hint: Any) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin in (list, tuple) and isinstance(value, (list, tuple)):
            return list(value)
    expected = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise InputError(f"parameter {name!r} must be {expected}, got {type(value).__name__}", name)


class Task:
    name: str = ""
    head: str = ""
    Params: type = object

    def __init__(self, runtime: "Runtime", tokenizer: Tokenizer, max_tokens: int | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, **defaults: Any):
        if runtime.model.head_name != self.head:
            raise ValueError(
                f"{self.name} needs a {self.head} model, but the checkpoint has "
                f"{runtime.model.head_name or 'no'} head"
            )
        self.runtime = runtime
        self.model = runtime.model
        self.tokenizer = tokenizer
        self.max_tokens = (max_tokens or default_max_tokens(runtime.device.type, runtime.mode)
                           or DEFAULT_MAX_TOKENS["cpu"])
        self.max_batch = max_batch
        self.defaults = defaults
        self.params(**defaults)  # fail at construction on a bad default

    def params(self, **overrides: Any):
        return build_params(self.Params, {**self.defaults, **overrides}, self.name)

    @property
    def max_length(self) -> int:
        """Longest token sequence the model accepts."""
        return min(self.tokenizer.model_max_length, self.model.cfg.max_length)

    # ------------------------------------------------------------------ the loop
    def run(self, inputs: Sequence[Any], **params: Any) -> list[Any]:
        if not isinstance(inputs, (list, tuple)):  # a string would run character by character
            raise InputError(f"inputs must be a list, got {type(inputs).__name__}", "inputs")
        p = self.params(**params)
        features, owners = self.featurize(list(inputs), p)
        outputs = self.forward(features)
        return self.decode(list(inputs), features, owners, outputs, p)

    def forward(self, features: Sequence[Feature], max_batch: int | None = None) -> list[np.ndarray]:
        """Model outputs per feature, unpadded: (T, ...) token-level, (C,) sequence-level, or
        (N, V) for the N positions a masked-LM task asked for. max_batch: rows per pass, if fewer
        than the task's."""
        results: list[np.ndarray | None] = [None] * len(features)
        lengths = [len(f.input_ids) for f in features]
        for group in plan(lengths, self.max_tokens, min(max_batch or self.max_batch, self.max_batch)):
            batch = collate([features[i] for i in group], self.tokenizer.pad_token_id)
            positions = self.positions(batch)
            logits = self.runtime.forward(batch, positions)
            if positions is not None:  # rows of `logits` follow `positions`, which run row by row
                counts = np.bincount(positions // batch["input_ids"].shape[1], minlength=len(group))
                for i, chunk in zip(group, np.split(logits, np.cumsum(counts)[:-1])):
                    results[i] = chunk
            else:
                for r, i in enumerate(group):
                    results[i] = logits[r, : lengths[i]] if logits.ndim == 3 else logits[r]
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ per-task hooks
    def featurize(self, inputs: list[Any], p) -> tuple[list[Feature], list[int]]:
        """Features and, for each, the index of the input it came from."""
        raise NotImplementedError

    def decode(self, inputs: list[Any], features: list[Feature], owners: list[int], outputs: list[np.ndarray], p) -> list[Any]:
        raise NotImplementedError

    def positions(self, batch: dict[str, np.ndarray]) -> np.ndarray | None:
        """Flat (B * T) indices of the only positions to project (masked-LM); None for all."""
        return None

    def cost(self, inputs: list[Any], p) -> Cost:
        """What `run(inputs)` with options `p` (a Params object) will cost, estimated without
        tokenizing (tasks/cost.py): the server's per-request budget. This default suits one
        sequence per input and one small result each; a task whose windows or answers grow with
        its options overrides it."""
        per_input = tuple(min(sum(map(text_tokens, x.values())) if isinstance(x, dict) else text_tokens(x), self.max_length)
                          + 3 for x in inputs)
        return Cost(per_input, len(inputs), 200 * len(inputs))

    # ------------------------------------------------------------------ shared helpers
    @staticmethod
    def batch_of(inputs: Any, kinds: tuple[type, ...] = (str,), field: str = "inputs") -> tuple[list, bool]:
        """The one input contract of `__call__`: one input (of `kinds`) or a list of them ->
        (list, whether it was one). Each item is checked by the task's featurize."""
        if isinstance(inputs, kinds):
            return [inputs], True
        if isinstance(inputs, (list, tuple)):
            return list(inputs), False
        what = " or ".join({str: "a string", dict: "an object"}[k] for k in kinds)
        raise InputError(f"{field} must be {what} or a list of them, got {type(inputs).__name__}", field)

    @staticmethod
    def check_keys(item: dict, allowed: tuple[str, ...], field: str) -> None:
        """A dict input carries only the task's fields: a misspelt `text_pair` would otherwise be
        dropped, and the text scored alone."""
        for key in item:
            if key not in allowed:
                raise InputError(f"{field} has an unknown field {key!r}; accepted: {', '.join(allowed)}",
                                 f"{field}.{key}")

    def check_text(self, text: Any, field: str) -> str:
        if not isinstance(text, str):
            raise InputError(f"{field} must be a string, got {type(text).__name__}", field)
        if not text.strip():
            raise InputError(f"{field} is empty", field)
        return text

    def check_length(self, n_tokens: int, field: str, hint: str = "") -> None:
        if n_tokens > self.max_length:
            raise InputError(
                f"{field} is {n_tokens} tokens long, over the model's limit of {self.max_length}{hint}", field
            )
