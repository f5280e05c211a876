"""Model references -> weights on disk -> a `Model`, and back to a Hugging Face directory.

A reference is a local directory, a hub id found in the local Hugging Face cache, or a hub id
downloaded through `huggingface_hub` when online. Weights load from safetensors (or a
`pytorch_model.bin` with `weights_only=True`) onto a model built on the meta device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import ModelConfig, head_from_architectures
from .convert import from_hf_state_dict, to_hf_state_dict
from .heads import Model, init_weights
from .hub import WEIGHT_FILES, CheckpointError, ModelNotFoundError, resolve  # noqa: F401 - re-exported
from .model import sinusoidal_table



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
) -> Model:
    """Load a checkpoint. head="auto" uses the one it was saved with; naming another head (say
    "question-answering" on a bare encoder) builds that head freshly initialised, for fine-tuning.
    id2label sets the labels (and so the size) of a classification head built that way."""
    path = resolve(ref)
    hf = read_config(path)
    try:
        cfg = ModelConfig.from_hf(hf)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    if id2label is not None:
        cfg = cfg.replace(id2label=dict(id2label))
    saved_head = head_from_architectures(hf.get("architectures"))
    if head == "auto":
        head = saved_head
    conv = from_hf_state_dict(read_state_dict(path), cfg, head)
    sd = conv.state_dict
    if head is not None and saved_head is None and conv.heads_found:
        saved_head = head if head in conv.heads_found else next(iter(conv.heads_found))
    if "encoder.pooler.weight" in sd:
        cfg = cfg.replace(has_pooler=True)
    if cfg.sinusoidal_positions and "encoder.embed.pos.weight" not in sd:
        sd["encoder.embed.pos.weight"] = sinusoidal_table(cfg.max_positions, cfg.dim)

    with torch.device("meta"):
        model = Model(cfg, head)
    expected = model.state_dict()
    if not model.cfg.has_pooler:
        sd.pop("encoder.pooler.weight", None), sd.pop("encoder.pooler.bias", None)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: weights with no place in the model: {', '.join(unexpected[:20])}")
    fresh = [k for k in missing if k.startswith("head.") or k.startswith("encoder.pooler.")]
    if head is not None and head == saved_head and any(k.startswith("head.") for k in missing):
        raise CheckpointError(f"{path}: the {head} checkpoint lacks head weights: {', '.join(missing[:20])}")
    if len(fresh) != len(missing):
        absent = [k for k in missing if k not in fresh]
        raise CheckpointError(f"{path}: missing weights: {', '.join(absent[:20])}")
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
