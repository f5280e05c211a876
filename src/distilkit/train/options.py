"""Recipe options as pydantic models: one definition serves YAML recipes, `key=value` overrides,
Python keywords and `--help`.

`Options` is the base: unknown keys are refused with a "did you mean", values get pydantic's
coercion and its messages, each naming the key. `build_config` reads a YAML recipe and overrides
typed on a command line (strings, parsed by the option's type rather than guessed by YAML).
`options_help` lists every key with its type, default, allowed values and meaning.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InputError

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class Options(BaseModel):
    """Base of every recipe's options: strict about keys, pydantic's coercion for values."""

    # Not frozen: recipes derive defaults (metric, alpha_ce) after validation.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    raise ValueError(f"unknown option {key!r}{did_you_mean(key, cls.model_fields)}")
        return data

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what the saved config and --print-config show)."""
        return self.model_dump(mode="json")


class TrainOptions(Options):
    """Options of the loop. Recipes extend this model (FinetuneConfig, DistillConfig)."""

    output_dir: str = Field("runs/finetune", description="where checkpoints, metrics and the model go")
    epochs: int = Field(3, ge=0, description="passes over the training data")
    max_steps: int = Field(0, ge=0, description="optimizer steps; > 0 overrides epochs")
    batch_size: int = Field(32, ge=1, description="examples per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step "
                            "(global batch = batch_size x grad_accum x processes)")
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay (not on biases and LayerNorm weights)")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup share of the total steps")
    warmup_steps: int = Field(0, ge=0, description="warmup steps; > 0 takes precedence over warmup_ratio")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 turns it off")
    seed: int = Field(42, description="data order, dropout and fresh heads")
    precision: Precision = Field("auto", description="auto: bf16 on GPUs that have it, else fp16 with loss "
                                 "scaling; fp32 on CPUs")
    eval_every: int = Field(0, ge=0, description="steps between evaluations; 0: at the end of every epoch")
    save_every: int = Field(0, ge=0, description="steps between checkpoints; 0: at every evaluation")
    keep_checkpoints: int = Field(1, ge=1, description="resumable checkpoints kept (the best model is kept apart)")
    metric: str | None = Field(None, description="evaluation metric that picks the best checkpoint "
                               "(default: the task's)")
    greater_is_better: bool = Field(True, description="whether a higher metric is better")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl / TensorBoard / progress updates")
    group_by_length: bool = Field(True, description="batches of similar lengths (less padding), in random order")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    num_threads: int = Field(0, ge=0, description="torch CPU threads per process; 0 keeps torch's default")
    progress: bool = Field(True, description="a progress bar on a terminal, plain lines in a log")
    tensorboard: bool = Field(True, description="TensorBoard logs when the tensorboard package is installed")
    plot: bool = Field(True, description="loss and metric curves as output_dir/curves.png (needs matplotlib)")


# Names users bring from transformers' TrainingArguments and run_*.py scripts.
KNOWN_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
                 "gradient_accumulation_steps": "grad_accum", "model_name_or_path": "model",
                 "max_seq_length": "max_seq_len", "warmup": "warmup_steps", "fp16": "precision",
                 "bf16": "precision", "eval_steps": "eval_every", "save_steps": "save_every",
                 "logging_steps": "log_every", "save_total_limit": "keep_checkpoints"}


def did_you_mean(key: str, known: Any) -> str:
    known = list(known)
    alias = KNOWN_ALIASES.get(key.lower().replace("-", "_"))
    close = [alias] if alias in known else difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else " (--help lists the options)"


def describe(error: ValidationError) -> str:
    """A ValidationError as one line, each problem naming its option."""
    parts = []
    for e in error.errors():
        msg = e["msg"].removeprefix("Value error, ")
        loc = ".".join(str(x) for x in e["loc"])
        if loc and e["type"] == "missing":
            msg = f"option {loc!r} is required (in the recipe or as {loc}=...)"
        elif loc:
            msg = f"option {loc!r}: {msg} (got {e['input']!r})"
        parts.append(msg)
    return "; ".join(parts)


def validate(cls: type[Options], values: dict[str, Any]) -> Options:
    """cls(**values), with pydantic's errors as one InputError naming the option(s)."""
    try:
        return cls(**values)
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
        raise InputError(describe(e), str(loc[0]) if loc else None) from None


# ---------------------------------------------------------------------- YAML and key=value
def build_config(cls: type[Options], path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                 **values: Any) -> Options:
    """Options from a YAML recipe, then `key=value` overrides, then keyword values.
    Raises InputError (a ValueError) naming the file or the option."""
    merged: dict[str, Any] = dict(read_recipe(path)) if path is not None else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"override {item!r} must look like key=value", "overrides")
        field = cls.model_fields.get(key)
        merged[key] = parse_raw(raw, field.annotation) if field is not None else raw
    merged.update(values)
    return validate(cls, merged)


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such recipe file", "config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the recipe ({e})", "config") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{path}: not valid YAML: {problem}{where}", "config") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: a recipe is a mapping of option: value, got a {type(loaded).__name__}", "config")
    return loaded


def parse_raw(raw: str, annotation: Any) -> Any:
    """A command-line string for an option of type `annotation`: none/null for optional options,
    YAML flow syntax (or a,b,c) for lists and dicts; everything else is left to pydantic."""
    import yaml

    arms = _arms(annotation)
    if type(None) in arms and raw.strip().lower() in ("", "none", "null"):
        return None
    containers = [a for a in arms if typing.get_origin(a) in (list, dict)]
    if containers:
        if not raw.strip():
            return typing.get_origin(containers[0])()
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        lists = [a for a in containers if typing.get_origin(a) is list]
        if lists and isinstance(value, (str, int, float)):  # a,b,c or a single item; pydantic types the items
            value = [v.strip() for v in raw.split(",") if v.strip()]
        return value
    return raw


def _arms(annotation: Any) -> tuple:
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    return typing.get_args(annotation) if union else (annotation,)


# ---------------------------------------------------------------------- --help
def type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    arms = _arms(annotation)
    if len(arms) > 1:
        return " | ".join(type_name(a) for a in arms)
    if annotation is type(None):
        return "none"
    if typing.get_origin(annotation) is not None:
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list) -> str:
    marks = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = [f"{sign} {getattr(m, name)}" for m in metadata for name, sign in marks.items()
             if getattr(m, name, None) is not None]
    return f", {' and '.join(found)}" if found else ""


def options_help(cls: type[Options]) -> str:
    """Every option: name (type, default, bounds) and what it does; allowed values show as a|b|c."""
    rows = []
    for name, f in cls.model_fields.items():
        default = f.default_factory() if f.default_factory is not None else f.default
        rows.append(f"  {name} ({type_name(f.annotation)}, default {default!r}{_bounds(f.metadata)})")
        if f.description:
            rows.append(f"      {f.description}")
    return "options (YAML keys and key=value overrides, before or after the flags):\n" + "\n".join(rows)
