"""The OpenVINO backend: the `forward(batch, positions) -> logits` contract of `runtime.Runtime`, for
models written by `distilkit export --format openvino`. Imports no torch. Modes: fp32, bf16 (the
fp32 model run with OpenVINO's bf16 inference precision, on CPUs with AVX512-BF16/AMX) and int8
(the statically quantized model of `--int8 --calibrate`). One compiled model per runtime, compiled
for latency (one stream, all the threads asked for) unless `streams` asks for more; the compiled
blob is cached beside the export, so a second process starts in a fraction of the first's time."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import InputError
from .runtime_onnx import EXPORT_META, CPUDevice, ExportedModel, forward_exported

FILES = {"fp32": "openvino_model.xml", "int8": "openvino_model.int8.xml"}
MODE_FILES = {"fp32": FILES["fp32"], "bf16": FILES["fp32"], "int8": FILES["int8"]}  # bf16 is a compile option
CACHE = "openvino_cache"  # compiled blobs, beside the model files (when the directory is writable)


def export_format(path: str | os.PathLike) -> str:
    """"onnx" or "openvino": the engine a `distilkit export` directory was written for."""
    return json.loads((Path(path) / EXPORT_META).read_text()).get("format", "onnx")


def modes(files: list[str]) -> list[str]:
    """The run modes an OpenVINO export with these model files offers on this CPU."""
    return [m for m, f in MODE_FILES.items() if f in files and (m != "bf16" or cpu_has_bf16())]


def import_openvino():
    """`import openvino` without its model converter. The package imports openvino.tools.ovc (and
    with it the converter's telemetry, ssl and multiprocessing) to offer `openvino.convert_model`,
    which a runtime never calls: 0.14 of the 0.23 s that importing openvino takes on a 2-core AMD
    EPYC, in a cold start of 0.9 s. openvino itself skips the converter when it cannot be
    imported; `openvino.convert_model` is then imported on first use, for whoever asks."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    blocked = "openvino.tools.ovc" not in sys.modules
    if blocked:
        sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]  # import fails: ImportError
    try:
        import openvino
    finally:
        if blocked:
            del sys.modules["openvino.tools.ovc"]
    if not hasattr(openvino, "convert_model"):
        def lazy(name: str):
            if name != "convert_model":
                raise AttributeError(f"module 'openvino' has no attribute {name!r}")
            from openvino.tools.ovc import convert_model

            openvino.convert_model = convert_model
            return convert_model

        openvino.__getattr__ = lazy  # PEP 562: asked only for names the module lacks
    return openvino


def cpu_has_bf16() -> bool:
    ov = import_openvino()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINORuntime:
    """threads: OpenVINO's INFERENCE_NUM_THREADS (default: its own choice, the physical cores).
    streams: 1 (default) runs each batch as one request on all the threads, the lowest latency; more
    split a batch's rows over that many parallel requests, each on its share of the threads
    (OpenVINO's throughput mode), which can pay for large batches."""

    def __init__(self, path: str | os.PathLike, mode: str = "fp32", threads: int | None = None,
                 streams: int | None = None):
        try:
            ov = import_openvino()
        except ImportError as e:
            raise ImportError(f"{path} is an OpenVINO export: pip install 'distilkit[openvino]' to run it") from e

        path = Path(path)
        meta = json.loads((path / EXPORT_META).read_text())
        if mode == "auto":  # config.AUTO_POLICY: OpenVINO's bf16 also rounds the norms and softmax to bf16
            mode = "fp32"
        if mode not in MODE_FILES or MODE_FILES[mode] not in meta["files"]:
            have = ", ".join(modes(meta["files"]))
            hint = (" (export it again with --int8 --calibrate DATA)" if mode == "int8" else
                    f"; run mode {mode!r} from the torch checkpoint it was exported from ({meta.get('source')})")
            raise InputError(f"{path} is an OpenVINO export with {have} models, no {mode} one{hint}", "mode")
        if streams is None:
            streams = int(os.environ.get("DISTILKIT_OPENVINO_STREAMS") or 1)
        if streams < 1:
            raise InputError(f"streams must be at least 1, got {streams}", "streams")
        core = ov.Core()
        if mode == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            warnings.warn("mode='bf16' on a CPU without AVX512-BF16 or AMX: OpenVINO runs it in fp32 there; "
                          "use fp32 (or int8)", stacklevel=2)
        if os.access(path, os.W_OK):
            core.set_property({"CACHE_DIR": str(path / CACHE)})
        config = {
            "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
            "NUM_STREAMS": streams,
            # f32 unless asked: OpenVINO's CPU plugin otherwise picks bf16 itself where there is AMX
            "INFERENCE_PRECISION_HINT": "bf16" if mode == "bf16" else "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(path / MODE_FILES[mode]), "CPU", config)
        self.requests = [self.compiled.create_infer_request() for _ in range(streams)]
        self.inputs = {i.get_any_name() for i in self.compiled.inputs}
        from .config import ModelConfig

        self.model = ExportedModel(ModelConfig.from_hf(json.loads((path / "config.json").read_text())), meta["head"])
        self.cfg = self.model.cfg
        self.device = CPUDevice()
        self.mode = mode

    def forward(self, batch: dict[str, np.ndarray], positions: np.ndarray | None = None) -> np.ndarray:
        """Logits as float32 numpy, as `runtime.Runtime.forward`."""
        return forward_exported(batch, positions, self.inputs, self._run)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        B = feed["input_ids"].shape[0]
        # positions index the whole batch's tokens: a masked-LM batch runs as one request
        n = 1 if "positions" in feed else min(len(self.requests), B)
        if n == 1:
            return self._logits(self.requests[0].infer(feed))
        bounds = np.linspace(0, B, n + 1).astype(int)
        for r, (a, b) in zip(self.requests, zip(bounds, bounds[1:])):
            r.start_async({k: v[a:b] for k, v in feed.items()})
        outs = []
        for r in self.requests[:n]:
            r.wait()
            outs.append(self._logits(r.results))
        return np.concatenate(outs)

    @staticmethod
    def _logits(results) -> np.ndarray:
        # a copy: the request reuses its output buffer on its next run
        return np.array(next(v for k, v in results.items() if "logits" in k.get_names()), dtype=np.float32)
