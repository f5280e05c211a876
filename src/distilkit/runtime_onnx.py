"""The ONNX Runtime backend: the same `forward(batch, positions) -> logits` contract as
`runtime.Runtime`, for models written by `distilkit export`. Imports no torch, so a server or a
short-lived job starts in a fraction of a second."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .cpu import int8_sums_saturate
from .errors import InputError

EXPORT_META = "distilkit_export.json"
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


@dataclass
class ExportedModel:
    """What tasks need to know of a model they can't see: its config and head."""

    cfg: ModelConfig
    head_name: str


@dataclass
class CPUDevice:
    type: str = "cpu"


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / EXPORT_META).is_file()


class OnnxRuntime:
    def __init__(self, path: str | os.PathLike, mode: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        meta = json.loads((path / EXPORT_META).read_text())
        mode = "fp32" if mode == "auto" else mode  # config.AUTO_POLICY: ONNX Runtime has no bf16 here
        if mode not in FILES or FILES[mode] not in meta["files"]:
            have = ", ".join(m for m, f in FILES.items() if f in meta["files"])
            raise InputError(f"{path} is an ONNX export with {have} models, no {mode} one: run mode {mode!r} "
                             f"from the torch checkpoint it was exported from ({meta.get('source')})", "mode")
        if mode == "int8" and int8_sums_saturate() and not meta.get("int8_reduce_range"):
            warnings.warn(f"{path}'s int8 model was quantized for CPUs with VNNI or AMX; this CPU adds int8 "
                          "products in int16, where its large products saturate and its answers drift: export "
                          "it again on a CPU like this one (the weights then keep 7 bits) or run fp32", stacklevel=3)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path / FILES[mode]), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.model = ExportedModel(ModelConfig.from_hf(json.loads((path / "config.json").read_text())), meta["head"])
        self.cfg = self.model.cfg
        self.device = CPUDevice()
        self.mode = mode

    def forward(self, batch: dict[str, np.ndarray], positions: np.ndarray | None = None) -> np.ndarray:
        return forward_exported(batch, positions, self.inputs, lambda feed: self.session.run(["logits"], feed)[0])


def forward_exported(batch: dict[str, np.ndarray], positions: np.ndarray | None, inputs: set[str], run) -> np.ndarray:
    """Logits of an exported graph with `inputs`, run by `run(feed)`: the masked-LM graph projects
    `positions` (indices into the flattened B*T tokens), or every position when None, shaped
    (B, T, V) then as the torch model does."""
    feed = {k: v for k, v in batch.items() if k in inputs}
    if "positions" not in inputs:
        return run(feed)
    every = positions is None
    if every:
        positions = np.arange(batch["input_ids"].size, dtype=np.int64)
    feed["positions"] = positions.astype(np.int64)
    out = run(feed)
    return out.reshape(*batch["input_ids"].shape, -1) if every else out
