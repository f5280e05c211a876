"""Static int8 for `distilkit export --int8 --calibrate DATA`: activation scales measured on real
examples of the model's task instead of computed on every call.

The calibration batches are what the task itself feeds the model: DATA is read with the readers of
`distilkit evaluate` and run through the task's own featurizing and batching on the fp32 torch
model, whose `forward` inputs are recorded. OpenVINO's model is quantized by NNCF's post-training
quantization (transformer preset: SmoothQuant, then fast bias correction); the ONNX model by ONNX
Runtime's static quantizer (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# head -> the task whose inputs calibrate it
HEAD_TASKS = {"question-answering": "question-answering", "sequence-classification": "text-classification",
              "token-classification": "token-classification", "masked-lm": "fill-mask"}
DEFAULT_EXAMPLES = 300


def calibration_batches(model: Any, head: str, data: str | Path, limit: int = DEFAULT_EXAMPLES,
                        format: str = "auto", columns: dict[str, str] | None = None,
                        with_positions: bool = False, tokenizer: Any = None) -> list[dict[str, np.ndarray]]:
    """The model inputs (input_ids, attention_mask, token_type_ids where the model has them, and
    `positions` when with_positions) the task builds from the first `limit` examples of `data`.
    model, tokenizer: as `pipeline()` takes them (a loaded Model needs its tokenizer)."""
    from . import evaluate as E
    from .data.readers import read_records, read_texts
    from .errors import InputError
    from .pipelines import pipeline

    task = HEAD_TASKS[head]
    pipe = pipeline(task, model=model, tokenizer=tokenizer)
    batches: list[dict[str, np.ndarray]] = []
    forward = pipe.runtime.forward

    def record(batch, positions=None):
        feed = dict(batch)
        if with_positions:
            every = np.arange(batch["input_ids"].size, dtype=np.int64)
            feed["positions"] = (positions if positions is not None else every).astype(np.int64)
        batches.append(feed)
        return forward(batch, positions)

    pipe.runtime.forward = record
    if task == "fill-mask":
        texts = read_texts(data, (columns or {}).get("text", "text"))[:limit]
        if not texts:
            raise InputError(f"no texts in {data} to calibrate with", "calibrate")
        E.evaluate_fill_mask(pipe, texts)
        return batches
    records = read_records(task, data, format, columns)[:limit]
    if not records:
        raise InputError(f"no {task} examples in {data} to calibrate with", "calibrate")
    if task == "question-answering":
        E.evaluate_question_answering(pipe, records, version_2=False)
    elif task == "text-classification":
        E.evaluate_text_classification(pipe, records)
    else:
        E.evaluate_token_classification(pipe, records)
    return batches


def quantize_openvino(model, batches: list[dict[str, np.ndarray]]):
    """NNCF post-training quantization of an OpenVINO model (ov.Model) on `batches`."""
    import nncf

    return nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(batches))


def quantize_onnx_static(src: Path, dst: Path, batches: list[dict[str, np.ndarray]],
                         reduce_range: bool = False) -> None:
    """ONNX Runtime's static quantization of the matrix products with constant weights (7-bit
    weights with reduce_range, for CPUs whose int8 kernels add product pairs in int16)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm"],
                    per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    # attention's activation x activation products stay fp32, as in the dynamic model
                    extra_options={"MatMulConstBOnly": True})
