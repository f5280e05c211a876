"""`distilkit export`: a checkpoint -> a model directory that `pipeline()` and the server load with
ONNX Runtime (`--format onnx`, the default) or OpenVINO (`--format openvino`), no torch needed. fp32
always (OpenVINO also runs it in bf16); `--int8` adds an int8 copy: int8 weights of the linear layers
with a scale per output channel, activations quantized on the fly (ONNX dynamic) or with the ranges
measured on `--calibrate DATA` (static: ONNX Runtime's quantizer, or NNCF for OpenVINO)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_model, resolve
from .cpu import int8_sums_saturate
from .errors import InputError
from .heads import Model
from .quantize import DEFAULT_EXAMPLES, calibration_batches, quantize_onnx_static, quantize_openvino
from .runtime_onnx import EXPORT_META, FILES
from .tasks.sentence_embedding import ST_FILES

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                    "vocab.json", "merges.txt")


class _Logits(nn.Module):
    """The model with a flat signature: named tensors in, logits out (a bare encoder's "logits"
    are its last hidden state, (B, T, dim), which the embedding tasks pool)."""

    def __init__(self, model: Model, with_types: bool, with_positions: bool):
        super().__init__()
        self.model, self.with_types, self.with_positions = model, with_types, with_positions

    def forward(self, input_ids, attention_mask, *rest):
        rest = list(rest)
        types = rest.pop(0) if self.with_types else None
        positions = rest.pop(0) if self.with_positions else None
        out = self.model(input_ids, attention_mask, types, positions=positions)
        return out.logits if out.logits is not None else out.last_hidden_state


def export_onnx(model: str | Path, out: str | Path, head: str | None = "auto", int8: bool = False,
                opset: int = 17, calibrate: str | Path | None = None,
                calibrate_limit: int = DEFAULT_EXAMPLES) -> Path:
    """Write `out`/model.onnx (+ model.int8.onnx), each with its weights in a .data file beside it,
    config.json, tokenizer files and the export meta. int8: dynamic quantization, or static with the
    activation ranges of the first `calibrate_limit` examples of the task in `calibrate` (quantize.py)."""
    src, m = _load(model, head)
    out = Path(out)
    names = _trace(m, out / FILES["fp32"], opset)
    files = [FILES["fp32"]]
    # On a CPU whose int8 kernels add product pairs in int16 (x86 without VNNI or AMX) the weights
    # keep 7 bits, as ONNX Runtime advises, or large products saturate: logits 9% off fp32's on a
    # tiny random model (tests/test_export.py). Recorded, so that a VNNI machine's export warns here.
    reduce_range = int8 and int8_sums_saturate()
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        untied = _untie_initializers(out / FILES["fp32"], out / "model.untied.onnx")
        if calibrate is not None:
            batches = calibration_batches(m, m.head_name, calibrate, calibrate_limit,
                                          with_positions="positions" in names, tokenizer=src)
            with _quiet_root_log("pre-processing before quantization"):
                quantize_onnx_static(untied, out / FILES["int8"], batches, reduce_range)
        else:
            with _quiet_root_log("pre-processing before quantization"):
                # The quantizer advises ONNX Runtime's quant_pre_process first (for static quantization);
                # on this graph it made the dynamic int8 model slower, as did ONNX Runtime's transformer
                # optimizer, whose fused ops the session's own optimizations already give.
                quantize_dynamic(str(untied), str(out / FILES["int8"]), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                                 reduce_range=reduce_range)
        untied.unlink()
        files.append(FILES["int8"])
    for name in files:
        _external_weights(out / name)
    _write_meta(src, m, out, model, {"files": files, "inputs": names, "opset": opset,
                                     "int8": None if not int8 else "static" if calibrate is not None else "dynamic",
                                     "int8_reduce_range": reduce_range})
    return out


def export_openvino(model: str | Path, out: str | Path, head: str | None = "auto", int8: bool = False,
                    calibrate: str | Path | None = None, calibrate_limit: int = DEFAULT_EXAMPLES,
                    opset: int = 17) -> Path:
    """Write `out`/openvino_model.xml/.bin (fp32; run as fp32 or bf16) and, with int8, the NNCF
    statically quantized openvino_model.int8.xml/.bin calibrated on `calibrate`, plus config.json,
    tokenizer files and the export meta. OpenVINO converts the same traced ONNX graph."""
    import tempfile

    import openvino as ov

    from .runtime_openvino import FILES as OV_FILES

    if int8 and calibrate is None:
        raise InputError("an OpenVINO int8 export is statically quantized: pass calibration examples of the "
                         "model's task (--calibrate DATA)", "calibrate")
    src, m = _load(model, head)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        names = _trace(m, Path(tmp) / "model.onnx", opset)
        fp32 = ov.convert_model(str(Path(tmp) / "model.onnx"))
    # fp32 weights on disk: OpenVINO's default (fp16 weights) would change fp32's answers
    ov.save_model(fp32, str(out / OV_FILES["fp32"]), compress_to_fp16=False)
    files = [OV_FILES["fp32"]]
    if int8:
        batches = calibration_batches(m, m.head_name, calibrate, calibrate_limit, with_positions="positions" in names,
                                      tokenizer=src)
        with _quiet_root_log("Dataset contains only"):  # NNCF's note that there are fewer batches than its default
            ov.save_model(quantize_openvino(fp32, batches), str(out / OV_FILES["int8"]), compress_to_fp16=False)
        files.append(OV_FILES["int8"])
    _write_meta(src, m, out, model, {"format": "openvino", "files": files, "inputs": names,
                                     "int8": "static" if int8 else None})
    return out


def _load(model: str | Path, head: str | None) -> tuple[Path, Model]:
    src = resolve(model)
    m = load_model(src, head=head).eval()
    return src, m


def _trace(m: Model, path: Path, opset: int) -> list[str]:
    """The model as an ONNX graph at `path` (dynamic batch and length); its input names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with_types = m.cfg.type_vocab_size > 0
    with_positions = m.head_name == "masked-lm"
    # An example with padding, so that the traced graph keeps the attention mask.
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    args, names = [ids, mask], ["input_ids", "attention_mask"]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    if with_types:
        args.append(torch.zeros_like(ids))
        names.append("token_type_ids")
        axes["token_type_ids"] = {0: "batch", 1: "tokens"}
    if with_positions:
        args.append(torch.tensor([1, 9]))
        names.append("positions")
        axes["positions"] = {0: "n"}
        axes["logits"] = {0: "n"}
    else:
        axes["logits"] = {0: "batch", 1: "tokens"} if m.head_name != "sequence-classification" else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # nn.Embedding checks padding_idx (RoBERTa's is 1) against the table's size, which the
        # tracer sees as a tensor: a constant here, whatever the input.
        warnings.filterwarnings("ignore", "Converting a tensor to a Python boolean", torch.jit.TracerWarning,
                                "torch.nn.functional")
        torch.onnx.export(_Logits(m, with_types, with_positions), tuple(args), str(path),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)
    return names


def _write_meta(src: Path, m: Model, out: Path, model: str | Path, meta: dict) -> None:
    (out / "config.json").write_text(json.dumps(m.cfg.to_hf(m.cfg.architecture(m.head_name)), indent=2) + "\n")
    for name in _TOKENIZER_FILES + ST_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    for module in _st_module_dirs(src):  # a sentence-transformers folder's pooling config, for the embedding tasks
        shutil.copytree(src / module, out / module, dirs_exist_ok=True)
    (out / EXPORT_META).write_text(json.dumps({"head": m.head_name, **meta, "source": str(model)}, indent=2) + "\n")


def _st_module_dirs(src: Path) -> list[str]:
    """The module folders (1_Pooling, ...) a sentence-transformers modules.json names."""
    if not (src / "modules.json").is_file():
        return []
    return [m["path"] for m in json.loads((src / "modules.json").read_text()) if m.get("path") and (src / m["path"]).is_dir()]


@contextlib.contextmanager
def _quiet_root_log(text: str):
    """Drop root-logger records containing `text` (a library's advice that does not apply) for a while."""

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _external_weights(path: Path) -> None:
    """Move the weights out of the protobuf into `path`.data, which ONNX Runtime maps instead of
    parsing: a session opens 2-3x faster (measured 0.54 -> 0.27 s fp32, 0.28 -> 0.10 s int8 for
    DistilBERT-base), which is most of a short-lived job's cold start."""
    import onnx

    model = onnx.load(str(path))
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    # onnx creates the data file owner-only (0600); give it the graph file's permissions, so that a
    # server running as another user can read what it can already see.
    data.chmod(path.stat().st_mode & 0o777)


def _untie_initializers(src: Path, dst: Path) -> Path:
    """Give every matrix product its own copy of an initializer that a Gather also reads.

    The tied masked-LM projection reads the word-embedding table; the quantizer would rewrite that
    table for the product and break the embedding lookup. Only the int8 file pays for the copy."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    gathered = {n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits}
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for j, name in enumerate(node.input):
                if name in gathered:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(inits[name])
                    copy.name = f"{name}.for_{node.name.strip('/').replace('/', '_')}"
                    graph.initializer.append(copy)
                    node.input[j] = copy.name
    onnx.save(model, str(dst))
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="distilkit export", description=__doc__)
    ap.add_argument("--model", required=True, help="local directory or hub id")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--format", choices=["onnx", "openvino"], default="onnx",
                    help="onnx (run with ONNX Runtime) or openvino (pip install 'distilkit[openvino]')")
    ap.add_argument("--int8", action="store_true", help="also write an int8 model: dynamically quantized, or "
                    "statically with --calibrate (OpenVINO: --calibrate required)")
    ap.add_argument("--calibrate", metavar="DATA", help="examples of the model's task (the files `distilkit "
                    "evaluate --data` reads) whose activation ranges the int8 model keeps")
    ap.add_argument("--calibrate-limit", type=int, default=DEFAULT_EXAMPLES,
                    help=f"calibrate on the first N examples (default {DEFAULT_EXAMPLES})")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args(argv)
    if args.calibrate and not args.int8:
        ap.error("--calibrate calibrates the int8 model: add --int8")
    from .data.readers import DataError

    try:
        if args.format == "openvino":
            path = export_openvino(args.model, args.out, int8=args.int8, calibrate=args.calibrate,
                                   calibrate_limit=args.calibrate_limit, opset=args.opset)
        else:
            path = export_onnx(args.model, args.out, int8=args.int8, opset=args.opset, calibrate=args.calibrate,
                               calibrate_limit=args.calibrate_limit)
    except (InputError, DataError) as e:
        ap.error(str(e))
    print(f"exported to {path}: {', '.join(json.loads((path / EXPORT_META).read_text())['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
