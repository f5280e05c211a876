"""Where a model runs: device, precision mode and threads, behind one `forward` contract.

Modes: "fp32" (the reference numerics), "bf16" (autocast; CPUs with AVX512-BF16/AMX and GPUs) and
"int8" (dynamic quantization of the linear layers, CPU). Tasks hand in numpy batches and get
float32 numpy logits back; they never touch torch.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from .heads import Model

MODES = ("fp32", "bf16", "int8")


class Runtime:
    def __init__(self, model: Model, device: str | torch.device | None = None, mode: str = "fp32",
                 threads: int | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if mode == "int8" and device.type != "cpu":
            raise ValueError("mode='int8' (dynamic quantization) runs on the CPU only; use bf16 on a GPU")
        if threads:
            torch.set_num_threads(threads)
        model = model.eval().to(device)
        if mode == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.cfg = model.cfg
        self.device = device
        self.mode = mode

    def _autocast(self):
        if self.mode == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: dict[str, np.ndarray], positions: np.ndarray | None = None) -> np.ndarray:
        """Logits of the model's head as float32 numpy. positions: masked-LM rows to project, (N,)."""
        with torch.inference_mode(), self._autocast():
            t = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            if self.cfg.type_vocab_size == 0:
                t.pop("token_type_ids", None)
            pos = torch.from_numpy(positions).to(self.device) if positions is not None else None
            out = self.model(t["input_ids"], t["attention_mask"], t.get("token_type_ids"), positions=pos)
            return out.logits.float().cpu().numpy()
