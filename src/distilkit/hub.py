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


def _path_like(ref: str, path: Path) -> bool:
    """Whether a reference that is not a directory was meant as a path rather than a hub id: it
    exists as a file, is written as a path, is no valid hub id, or starts in a local folder
    (`models/tiny_qa` beside a `models/`)."""
    if path.exists() or ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1:
        return True
    if "/" in ref and Path(ref.split("/")[0]).expanduser().is_dir():
        return True
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return True
    return False


def _did_you_mean(path: Path) -> str:
    import difflib

    try:
        names = [p.name for p in path.parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3)
    return f" (did you mean {', '.join(str(path.parent / c) for c in close)}?)" if close else ""


def resolve(ref: str | os.PathLike) -> Path:
    """Local directory -> local HF cache -> hub download (when online). Raises ModelNotFoundError."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    ref = str(ref)
    if _path_like(ref, path):
        raise ModelNotFoundError(f"model path {ref!r} is not a directory{_did_you_mean(path)}")
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
        f"({reason}). Pass a local directory instead: --model /path/to/{ref.split('/')[-1]} (a folder with "
        f"config.json, model.safetensors and tokenizer files, e.g. made on an online machine with "
        f"`hf download {ref} --local-dir ./{ref.split('/')[-1]}`)."
    )
