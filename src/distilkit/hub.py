"""Model references -> a local directory: a directory as it is, else the local Hugging Face cache,
else a hub download when online. No torch here, so an exported model serves without it."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_DOWNLOAD_PATTERNS = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt",
]


class ModelNotFoundError(FileNotFoundError):
    pass


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be read: missing files, corrupt weights, wrong keys."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def resolve(ref: str | os.PathLike) -> Path:
    """Local directory -> local HF cache -> hub download (when online). Raises ModelNotFoundError."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    ref = str(ref)
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelNotFoundError(f"model path {ref!r} is not a directory")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        snapshot_download = None
    if snapshot_download is not None:
        try:
            return Path(snapshot_download(ref, allow_patterns=_DOWNLOAD_PATTERNS, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            pass
        if not _offline():
            try:
                local = Path(snapshot_download(ref, allow_patterns=_DOWNLOAD_PATTERNS))
                if not any((local / f).exists() for f in WEIGHT_FILES):  # an old repo with only a .bin
                    local = Path(snapshot_download(ref, allow_patterns=_DOWNLOAD_PATTERNS + ["pytorch_model.bin"]))
                return local
            except Exception as e:  # noqa: BLE001 - any hub/network failure becomes the one clear message below
                reason = f"{type(e).__name__}: {e}".splitlines()[0]
            else:  # pragma: no cover
                reason = ""
        else:
            reason = "HF_HUB_OFFLINE is set"
    else:  # pragma: no cover
        reason = "huggingface_hub is not installed"
    raise ModelNotFoundError(
        f"model {ref!r} is neither a local directory nor in the Hugging Face cache, and could not be downloaded "
        f"({reason}).\nPass a local directory instead: --model /path/to/{ref.split('/')[-1]} (a folder with "
        f"config.json, model.safetensors and tokenizer files, e.g. made on an online machine with "
        f"`huggingface-cli download {ref} --local-dir ./{ref.split('/')[-1]}`)."
    )
