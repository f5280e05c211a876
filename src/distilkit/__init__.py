"""distilkit: fast, practical inference, serving, fine-tuning and distillation for the DistilBERT family.

Imports are lazy so that `distilkit --help` answers without loading torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["pipeline", "load_model", "save_pretrained", "Tokenizer", "Model", "ModelConfig", "InputError"]

_LAZY = {
    "pipeline": ("distilkit.pipelines", "pipeline"),
    "load_model": ("distilkit.checkpoint", "load_model"),
    "save_pretrained": ("distilkit.checkpoint", "save_pretrained"),
    "Tokenizer": ("distilkit.tokenizer", "Tokenizer"),
    "Model": ("distilkit.heads", "Model"),
    "ModelConfig": ("distilkit.config", "ModelConfig"),
    "InputError": ("distilkit.errors", "InputError"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'distilkit' has no attribute {name!r}")
