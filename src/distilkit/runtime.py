"""Where a model runs: device, precision mode and threads, behind one `forward` contract.

Modes: "fp32" (the reference numerics; on a CPU the linear layers of a model the runtime owns are
prepacked for oneDNN), "bf16" (bf16 linear layers, prepacked for oneDNN on a CPU, under autocast;
CPUs with AVX512-BF16/AMX and GPUs) and "int8" (dynamic quantization of the linear layers with
per-channel weight scales, CPU; oneDNN's kernels where there is AMX, 8-bit activations where there
is AVX512-VNNI or AMX). Batches that oneDNN runs are padded to bucketed lengths (bucket_length).
On a CPU, freed activation memory stays in the heap for the next pass (retain_freed_memory). Tasks
hand in numpy batches and get float32 numpy logits back; they never touch torch.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import sys
import warnings

import numpy as np
import torch

from .batching import CPU_BF16_MAX_TOKENS, DEFAULT_MAX_TOKENS, default_max_tokens
from .config import MODES
from .errors import InputError
from .heads import MaskedLMHead, Model


class Runtime:
    """owned: the runtime may change `model` in place (bf16 casts its linear layers once, instead of
    autocast casting every weight on every call; fp32 on a CPU prepacks them for oneDNN); otherwise bf16
    works on a copy and fp32 on `model` as it is (no copy of a model being trained, for instance).
    max_tokens: padded tokens per forward pass above which a batch runs in slices of rows (default:
    batching.default_max_tokens for the device and mode, 1024 on a CPU, 2048 in bf16; 0 turns slicing off)."""

    def __init__(self, model: Model, device: str | torch.device | None = None, mode: str = "fp32",
                 threads: int | None = None, owned: bool = False, max_tokens: int | None = None):
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {MODES}", "mode")
        device = default_device(device)
        if mode == "auto":  # config.AUTO_POLICY
            mode = "bf16" if device.type != "cpu" or cpu_has_bf16() else "fp32"
        if mode == "int8" and device.type != "cpu":
            raise InputError("mode='int8' (dynamic quantization) runs on the CPU only; use bf16 on a GPU", "mode")
        if threads:
            torch.set_num_threads(threads)
        if device.type == "cpu":
            retain_freed_memory()
        model = model.eval().to(device)
        onednn = False  # whether oneDNN runs the linear layers
        if mode == "int8":
            # Per-channel weight scales: on a real QA model (benchmarks/agreement.py, fbgemm's kernels)
            # they kept 64% of fp32's answer spans where one scale per tensor kept 53%, at the same speed.
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            engine = int8_engine()
            # The packed weights keep the engine's kernels. torch 2.13 deprecates torch.ao.quantization
            # and quantized tensors in favour of torchao, whose CPU int8 kernels its wheel lacks; these
            # are still the fastest eager ones. The notice is ours to act on, not every int8 user's.
            with _quantized_engine(engine), warnings.catch_warnings():
                warnings.filterwarnings("ignore", r"torch\.ao\.quantization is deprecated", DeprecationWarning)
                warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor, torch\.quantize_per_channel", UserWarning)
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
            onednn = engine == "onednn"
            int32_sums = _cpu_has("_is_amx_tile_supported") or _cpu_has("_is_vnni_supported")
            if int32_sums and engine in ("onednn", "fbgemm", "x86"):
                _replace_linears(model, Int8Linear, torch.ao.nn.quantized.dynamic.Linear)
        self.max_tokens = max_tokens if max_tokens is not None else default_max_tokens(device.type, mode) or 0
        if mode == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            warnings.warn("mode='bf16' on a CPU without AVX512-BF16 or AMX: bf16 arithmetic is emulated there "
                          "and no faster than fp32; use fp32 (or int8)", stacklevel=2)
        if mode == "bf16":
            # The values autocast would compute (it rounds each weight to bf16 the same way), without
            # re-casting ~all the parameters on every forward; layer norms and embeddings stay fp32.
            model = model if owned else copy.deepcopy(model)
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    m.to(torch.bfloat16)
            if isinstance(model.head, MaskedLMHead):
                model.head.projection = model.encoder.embed.word.weight.detach().to(torch.bfloat16)
            if device.type == "cpu" and PackedLinear.supported(torch.bfloat16):
                _replace_linears(model, lambda m: PackedLinear(m, self.max_tokens or CPU_BF16_MAX_TOKENS))
                onednn = True
        if mode == "fp32" and owned and device.type == "cpu" and PackedLinear.supported(torch.float32):
            _replace_linears(model, lambda m: PackedLinear(m, self.max_tokens or DEFAULT_MAX_TOKENS["cpu"]))
            onednn = True
        # oneDNN builds (and JIT-compiles) a primitive for every new shape: padding to a bounded set of
        # lengths lets a stream of requests of every length reuse them (see bucket_length).
        self.length_buckets = onednn and os.environ.get("DISTILKIT_LENGTH_BUCKETS", "1") != "0"
        self.model = model
        self.cfg = model.cfg
        self.device = device
        self.mode = mode

    def _autocast(self):
        if self.mode == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: dict[str, np.ndarray], positions: np.ndarray | None = None) -> np.ndarray:
        """Logits of the model's head (a bare encoder: its last hidden state) as float32 numpy.
        positions: masked-LM rows to project, indices into the flattened (B*T) tokens. On a CPU a batch
        of more than `max_tokens` padded tokens runs as consecutive slices of rows: the same logits,
        faster (see batching.default_max_tokens)."""
        B, T = batch["input_ids"].shape
        rows = max(1, self.max_tokens // T) if self.max_tokens else B  # before the length bucket's padding
        padded = min(bucket_length(T), self.cfg.max_length) if self.length_buckets else T
        if padded <= T:
            return self._forward_sliced(batch, positions, rows)
        pad = {k: np.pad(v, ((0, 0), (0, padded - T)), constant_values=self.cfg.pad_token_id if k == "input_ids" else 0)
               for k, v in batch.items()}
        if positions is not None:
            return self._forward_sliced(pad, positions // T * padded + positions % T, rows)
        logits = self._forward_sliced(pad, None, rows)
        return logits[:, :T] if logits.ndim > 2 else logits  # per-token logits lose the padding

    def _forward_sliced(self, batch: dict[str, np.ndarray], positions: np.ndarray | None, rows: int) -> np.ndarray:
        B, T = batch["input_ids"].shape
        if rows >= B:
            return self._forward(batch, positions)
        if positions is None:
            return np.concatenate([self._forward({k: v[r:r + rows] for k, v in batch.items()}, None)
                                   for r in range(0, B, rows)])
        out = None
        for r in range(0, B, rows):
            mine = np.nonzero((positions >= r * T) & (positions < (r + rows) * T))[0]
            if len(mine):  # a slice without asked-for positions costs nothing
                logits = self._forward({k: v[r:r + rows] for k, v in batch.items()}, positions[mine] - r * T)
                out = out if out is not None else np.empty((len(positions), logits.shape[1]), logits.dtype)
                out[mine] = logits
        return out if out is not None else self._forward(batch, positions)

    def _forward(self, batch: dict[str, np.ndarray], positions: np.ndarray | None) -> np.ndarray:
        with torch.inference_mode(), self._autocast():
            t = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            if self.cfg.type_vocab_size == 0:
                t.pop("token_type_ids", None)
            pos = torch.from_numpy(positions).to(self.device) if positions is not None else None
            out = self.model(t["input_ids"], t["attention_mask"], t.get("token_type_ids"), positions=pos)
            # A bare encoder (feature extraction, embeddings) hands back its last hidden state: (B, T, dim).
            x = out.logits if out.logits is not None else out.last_hidden_state
            return x.float().cpu().numpy()


def default_device(device: str | torch.device | None = None) -> torch.device:
    """`device`, or cuda when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _cpu_has(probe: str) -> bool:
    """torch.cpu's private feature probe `probe` (e.g. "_is_amx_tile_supported"); False where absent."""
    return getattr(torch.cpu, probe, lambda: False)()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where the bf16 mode pays."""
    return _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported")


def int8_engine() -> str:
    """The quantized engine whose kernels the int8 linear layers get. torch's x86 default packs them
    for fbgemm, which has no AMX kernels; oneDNN's run on AMX where the CPU has it: encoder at
    8 x 128 6,553 -> 10,606 tok/s, QA end to end 31.4 -> 49.3 q/s (`benchmarks/run.py --only
    speed,speed-int8-fbgemm,pipelines-int8,pipelines-int8-fbgemm`). Elsewhere torch's choice stands:
    on AVX512-VNNI without AMX (AMD Zen 4) no engine was reliably faster (`benchmarks/cpu_variants.py`).
    DISTILKIT_INT8_ENGINE names one (fbgemm, onednn, x86, ...) instead."""
    engines = torch.backends.quantized.supported_engines
    chosen = os.environ.get("DISTILKIT_INT8_ENGINE")
    if chosen:
        if chosen not in engines:
            raise ValueError(f"DISTILKIT_INT8_ENGINE={chosen!r}: this torch has {', '.join(engines)}")
        return chosen
    amx = _cpu_has("_is_amx_tile_supported")
    return "onednn" if amx and "onednn" in engines else torch.backends.quantized.engine


@contextlib.contextmanager
def _quantized_engine(name: str):
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_retained = False


def retain_freed_memory() -> bool:
    """Let a CPU forward pass reuse the heap memory the previous one freed. glibc serves buffers above
    its dynamic mmap threshold with fresh mappings and trims the heap top after frees, so every pass
    faulted its activations in again page by page: 12,256 minor faults per 8 x 128 fp32 forward on
    our machine (`benchmarks/speed.py`), none once the thresholds are fixed (OpenVINO sets them too;
    Intel's launchers preload jemalloc for the same reason). `benchmarks/pipelines.py --mode bf16`
    QA 49.8 -> 61.7 q/s; encoder 8 x 128 int8 (on fbgemm) +33%, bf16 +11%. Process-wide, glibc only, applied
    once; DISTILKIT_RETAIN_MEMORY=0 leaves malloc alone. Returns whether it is on."""
    global _retained
    if _retained or os.environ.get("DISTILKIT_RETAIN_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return _retained
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries: no glibc thresholds to set
        return False
    # Buffers up to 32 MiB (glibc's largest allowed threshold on 64-bit: a 2,048-token batch's largest
    # activation is 24 MiB in fp32) come from the heap, and up to 128 MiB of freed heap stays mapped.
    _retained = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20))
    return _retained


class PackedLinear(torch.nn.Module):
    """A linear layer (bf16 or fp32) whose weight oneDNN reorders into its blocked layout once, at
    load, instead of on every call (what inductor's weight freezing does on a CPU). bf16: the values
    of the bf16 nn.Linear under autocast; `benchmarks/pipelines.py --mode bf16` QA 45.4 -> 54.3 q/s.
    fp32: the same product up to rounding (oneDNN's kernels instead of MKL's); the per-call repacking
    it saves weighs most on few rows: `benchmarks/latency.py`. rows_hint: the rows a call usually
    has, from which oneDNN picks the layout."""

    def __init__(self, linear: torch.nn.Linear, rows_hint: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.bias = linear.bias.detach() if linear.bias is not None else None

    @staticmethod
    def supported(dtype: torch.dtype) -> bool:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                and (dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias, "none", [], "")


def bucket_length(tokens: int) -> int:
    """`tokens` rounded up to a sixteenth of its power of two: 20 -> 20, 41 -> 42, 200 -> 208,
    300 -> 304. Up to 512 tokens that makes 96 lengths, each under 6.25% of padding. oneDNN builds and
    JIT-compiles a primitive for every new shape of a product (a bf16 768 x 3072 one: 4.8 to 9.7 ms
    for the first call at a new row count, 0.8 to 1.0 ms for the same call again on our machine;
    `benchmarks/latency.py` prints it) and keeps 1,024 of them: requests of every length would
    otherwise rebuild them again and again (latency.py, DISTILKIT_LENGTH_BUCKETS=0)."""
    step = 1 << max(0, tokens.bit_length() - 5)
    return -(-tokens // step) * step


class Int8Linear(torch.nn.Module):
    """torch's dynamically quantized linear layer (`quantize_dynamic`: int8 weights, activations
    quantized on every call with one scale per tensor) with all 256 levels for the activations.
    torch's own gives them 128 (`reduce_range`), which kernels that add pairs of u8 x s8 products
    in int16 (AVX2 and AVX-512 without VNNI) need against saturation; with AVX512-VNNI or AMX,
    oneDNN's and fbgemm's kernels add them in int32, where the halved resolution only costs
    accuracy. On the real QA model (`benchmarks/agreement.py --modes fp32,int8`), at the same
    speed: oneDNN's kernels 67.37% -> 79.33% of fp32's answer spans (F1 -2.98 -> -2.31 points),
    fbgemm's (DISTILKIT_INT8_ENGINE=fbgemm, as on CPUs without AMX) 63.51% -> 80.70% (F1 -3.44 ->
    -0.25)."""

    def __init__(self, layer: torch.nn.Module):  # a torch.ao.nn.quantized.dynamic.Linear
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.packed = layer._packed_params._packed_params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, reduce_range=False).to(x.dtype)


def _replace_linears(model: torch.nn.Module, make, kind: type = torch.nn.Linear) -> None:
    """Every `kind` submodule m of model -> make(m)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
