"""Model references -> weights on disk -> a `Model`, and back to a Hugging Face directory.

A reference is a local directory, a hub id found in the local Hugging Face cache, or a hub id
downloaded through `huggingface_hub` when online. Weights load from safetensors (or a
`pytorch_model.bin` with `weights_only=True`) onto a model built on the meta device.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import ModelConfig, head_from_architectures
from .convert import Converted, from_hf_state_dict, to_hf_state_dict
from .heads import HEADS, Model, init_weights
from .hub import WEIGHT_FILES, CheckpointError, ModelNotFoundError, resolve  # noqa: F401 - re-exported
from .model import sinusoidal_table

log = logging.getLogger("distilkit.checkpoint")


def read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face model directory")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """All tensors of the checkpoint in `path` (single file or sharded)."""
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        files = [file]
        if name.endswith(".index.json"):
            index = json.loads(file.read_text())
            files = [path / f for f in sorted(set(index["weight_map"].values()))]
        sd: dict[str, Tensor] = {}
        for f in files:
            sd.update(_read_weights(f))
        return sd
    raise CheckpointError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def _read_weights(file: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, EOFError, SafetensorError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"cannot read weights from {file}: {reason} (corrupt or truncated file?)") from None


def load_model(
    ref: str | os.PathLike,
    head: str | None = "auto",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    id2label: dict[int, str] | None = None,
    fresh_head: bool = False,
) -> Model:
    """Load a checkpoint.

    head="auto": the head it was saved with (none for a bare encoder). head=None: the bare encoder
    of any checkpoint, its head weights ignored. A head name ("question-answering", ...): that
    head, which the checkpoint must carry; one without it, or with a head of another kind, is a
    CheckpointError naming the missing weights, since running a random head would answer with
    noise. fresh_head=True builds it freshly initialised instead (and logs that): what fine-tuning
    and distillation ask for; a checkpoint that has the head keeps its trained weights.
    id2label sets the labels (and so the size) of a classification head built that way."""
    path = resolve(ref)
    hf = read_config(path)
    try:
        cfg = ModelConfig.from_hf(hf)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    if id2label is not None:
        cfg = cfg.replace(id2label=dict(id2label))
    raw = read_state_dict(path)
    saved_head = head_from_architectures(hf.get("architectures")) or _head_in_weights(raw, cfg)
    if head == "auto":
        head = saved_head
    conv = _convert(raw, cfg, head, path)
    sd = conv.state_dict
    if "encoder.pooler.weight" in sd:
        cfg = cfg.replace(has_pooler=True)
    if cfg.sinusoidal_positions and "encoder.embed.pos.weight" not in sd:
        sd["encoder.embed.pos.weight"] = sinusoidal_table(cfg.max_positions, cfg.dim)

    with torch.device("meta"):
        model = Model(cfg, head)
    expected = model.state_dict()
    if not model.cfg.has_pooler:
        sd.pop("encoder.pooler.weight", None), sd.pop("encoder.pooler.bias", None)
    # The pooler is part of BERT's classification head: without it the head computes something else.
    pooled = head == "sequence-classification" and model.cfg.has_pooler
    head_keys = [k for k in expected if k.startswith("head.") or (pooled and k.startswith("encoder.pooler."))]
    fresh: list[str] = []
    if head is not None and (head != saved_head or any(k not in sd for k in head_keys)):
        if not fresh_head:
            raise CheckpointError(_no_head_message(path, cfg, head, saved_head, head_keys, sd, expected))
        # Build the whole head afresh: another head's weights (DistilBERT's `classifier` is both its
        # token head and half its sequence head) would give it a half-trained start.
        fresh = [k for k in head_keys if k.startswith("head.") or k not in sd]
        for k in fresh:
            sd.pop(k, None)
        base = f"a {saved_head} checkpoint" if saved_head else "a bare encoder"
        log.warning("%s: a freshly initialised %s head (%s) on %s; train it before use", path, head,
                    ", ".join(_hf_names(fresh, cfg, head, expected)), base)
    missing = [k for k in expected if k not in sd and k not in fresh]
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: weights with no place in the model: {', '.join(unexpected[:20])}")
    if missing:
        raise CheckpointError(f"{path}: missing weights: {', '.join(missing[:20])}")
    for key, value in conv.tied.items():
        if key in sd and value.shape == sd[key].shape and not torch.equal(value, sd[key]):
            raise CheckpointError(f"{path}: untied masked-LM decoder weights are not supported ({key})")
    for key, value in sd.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, config.json implies {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
    for name in {k.rsplit(".", 1)[0] if k.startswith("encoder.") else "head" for k in fresh}:
        module = model.get_submodule(name)
        module.to_empty(device="cpu")
        init_weights(module, cfg.initializer_range)
        module.to(dtype)
    return model.to(device).eval()


def _convert(sd: dict[str, Tensor], cfg: ModelConfig, head: str | None, path: Path) -> Converted:
    try:
        return from_hf_state_dict(sd, cfg, head)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _head_in_weights(sd: dict[str, Tensor], cfg: ModelConfig) -> str | None:
    """The head whose weights the checkpoint carries, all of them and no other's, for a config.json
    whose `architectures` does not say (or names a pre-training model). Decided on meta tensors."""
    meta = {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}
    for head in HEADS:
        try:
            conv = from_hf_state_dict(meta, cfg, head)
        except ValueError:
            return None  # unknown keys: load_model's own conversion reports them
        if head not in conv.heads_found or conv.unused:
            continue
        with torch.device("meta"):
            expected = Model(cfg, head).state_dict()
        if all(k in conv.state_dict for k in expected if k.startswith("head.")):
            return head
    return None


def _hf_names(keys: list[str], cfg: ModelConfig, head: str, expected: dict[str, Tensor]) -> list[str]:
    """Our parameter names -> the names a transformers checkpoint stores them under."""
    try:
        return list(to_hf_state_dict({k: expected[k] for k in keys}, cfg, head))
    except ValueError:  # pragma: no cover - every head key has a template
        return keys


def _no_head_message(path: Path, cfg: ModelConfig, head: str, saved_head: str | None, head_keys: list[str],
                     sd: dict[str, Tensor], expected: dict[str, Tensor]) -> str:
    has = f"has a {saved_head} head" if saved_head else "has no task head (a bare encoder)"
    has = f"has an incomplete {head} head" if saved_head == head else f"{has}, not the {head} head asked for"
    missing = _hf_names([k for k in head_keys if k not in sd], cfg, head, expected)
    other = [] if saved_head in (None, head) else _hf_names([k for k in head_keys if k in sd and k.startswith("head.")],
                                                             cfg, head, expected)
    detail = f"; missing weights: {', '.join(missing[:20])}" if missing else ""
    if other:  # DistilBERT's `classifier` is both its token head and half its sequence head
        detail += f"; its {', '.join(other)} belong to its {saved_head} head"
    return (f"{path} {has}{detail}. Running it would answer with random "
            f"weights: use a checkpoint trained for the task, or train the head first (distilkit finetune or "
            f"distill; in Python load_model(path, head={head!r}, fresh_head=True)).")


def save_pretrained(model: Model, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) as transformers would."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    hf = cfg.to_hf(cfg.architecture(model.head_name))
    (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(to_hf_state_dict(sd, cfg, model.head_name), str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(path)
    return path
