"""distilkit vs the transformers pipelines, same inputs, same process, alternating rounds.

QA: N questions with their contexts from ../shared/data/squad against the transformers 4.x
question-answering pipeline. Fill-mask: N one-mask sentences from ../shared/data/emotion against
the installed transformers fill-mask pipeline. No DistilBERT weights can be downloaded here, so
both sides load the same randomly initialised DistilBERT-base-sized checkpoints (dim 768, 6
layers) with the real distilbert-base-uncased tokenizer: the compute is the real model's.

    python benchmarks/pipelines.py [--n 256] [--rounds 3] [--mode fp32[,bf16,...]] [--task qa|fill-mask|all] [--no-optimum]
        [--workdir DIR]

--mode: comma-separated, the first the one whose ratios are printed: fp32, bf16, int8, auto (torch),
onnx-fp32 / onnx-int8 / onnx-int8-static (a `distilkit export` of the same checkpoint, run by ONNX
Runtime through distilkit's pipeline; -static: calibrated on 128 training examples of the task),
openvino-fp32 / -bf16 / -int8 (`distilkit export --format openvino`, int8 calibrated the same way).

QA also runs against Optimum's int8 ONNX Runtime model in the same transformers pipeline (the
Optimum recipe: `ORTModelForQuestionAnswering` export, then dynamic int8 quantization with
`AutoQuantizationConfig.avx512_vnni`), when optimum-onnx is installed (`pip install -e ".[bench]"`),
and against optimum-intel's OpenVINO model in the same pipeline, bf16 and NNCF static int8, when
optimum-intel is installed (see optimum_openvino_qa).
Prints examples/s per engine (median over rounds) and distilkit's ratio to each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILKIT_DATA", ROOT.parent / "shared" / "data"))


def build_checkpoints(workdir: Path) -> dict[str, Path]:
    """DistilBERT-base-sized QA and MLM checkpoints with the real tokenizer (random weights)."""
    import torch
    import transformers as T

    tok_dir = DATA / "tokenizers" / "distilbert-base-uncased"
    out = {}
    for name, cls in (("qa", T.DistilBertForQuestionAnswering), ("fill-mask", T.DistilBertForMaskedLM)):
        d = workdir / name
        torch.manual_seed(0)
        cls(T.DistilBertConfig.from_pretrained(tok_dir)).save_pretrained(d)
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            shutil.copy(tok_dir / f, d / f)
        out[name] = d
    return out


def squad_examples(n: int) -> list[dict]:
    data = json.loads((DATA / "squad" / "dev-v2.0-half.json").read_text())
    examples = [{"question": qa["question"], "context": p["context"]}
                for article in data["data"] for p in article["paragraphs"] for qa in p["qas"]]
    random.Random(0).shuffle(examples)
    return examples[:n]


def mask_sentences(n: int) -> list[str]:
    lines = [line.rsplit(";", 1)[0].split() for line in (DATA / "emotion" / "test.txt").read_text().splitlines()
             if line.strip()]
    rng = random.Random(0)
    out = []
    for words in lines:
        if len(words) >= 4:
            words = list(words)
            words[rng.randrange(len(words))] = "[MASK]"
            out.append(" ".join(words))
        if len(out) == n:
            break
    return out


def settle(seconds: float = 0.25) -> None:
    """An untimed pause before an engine's turn, so that the engine before it has gone idle: ONNX
    Runtime's worker threads keep spinning for tens of milliseconds after a run, and the next engine
    would pay for them (`latency.py --task qa --modes bf16 --pause 0`, where bf16 follows Optimum
    every other turn: 34.4 ms a question; 26.2 with the pause, in the README's table)."""
    time.sleep(seconds)


def timed(fn, pause: float = 0.25) -> float:
    """Seconds that fn() takes, after settle(pause)."""
    settle(pause)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(name: str, engines: dict, n: int, rounds: int) -> dict:
    """engines: label -> callable, distilkit first. Rounds alternate the order, so the machine's
    noise hits every engine alike; the medians of the rounds are compared."""
    for fn in engines.values():  # warm-up (first-call allocations, thread pools)
        fn()
    times = {label: [] for label in engines}
    for r in range(rounds):
        for label in (list(engines) if r % 2 == 0 else list(engines)[::-1]):
            times[label].append(timed(engines[label]))
        print(f"  round {r + 1}: " + ", ".join(f"{label} {n / ts[-1]:.1f}/s" for label, ts in times.items()), flush=True)
    rates = {label: n / statistics.median(ts) for label, ts in times.items()}
    ours, *refs = rates
    print(f"{name}: " + " | ".join(f"{label} {rate:.1f} ex/s" for label, rate in rates.items()) + " | "
          + ", ".join(f"{rates[ours] / rates[ref]:.2f}x {ref}" for ref in refs))
    return {"task": name, **rates, **{f"ratio vs {ref}": rates[ours] / rates[ref] for ref in refs}}


# Calibration examples of each task for the static int8 exports: training data (never a test set).
CALIBRATION = {"question-answering": "squad/dev-v2.0-half.json", "fill-mask": "imdb/train.jsonl.gz",
               "text-classification": "emotion/train.txt", "token-classification": "conll2003/train.txt"}
HEADS = {"question-answering": "question-answering", "masked-lm": "fill-mask",
         "sequence-classification": "text-classification", "token-classification": "token-classification"}


def exported(checkpoint: Path, backend: str, calibrate_limit: int = 128) -> Path:
    """A `distilkit export` of the checkpoint, written once beside it: "onnx" (dynamic int8),
    "onnx-static" (int8 calibrated on `calibrate_limit` training examples of its task) or "openvino"
    (fp32 + calibrated static int8)."""
    from distilkit.checkpoint import load_model
    from distilkit.export import export_onnx, export_openvino

    out = checkpoint.with_name(f"{checkpoint.name}-{backend}")
    if (out / "distilkit_export.json").is_file():
        return out
    if backend == "onnx":
        return export_onnx(checkpoint, out, int8=True)
    data = DATA / CALIBRATION[HEADS[load_model(checkpoint).head_name]]
    export = export_openvino if backend == "openvino" else export_onnx
    return export(checkpoint, out, int8=True, calibrate=data, calibrate_limit=calibrate_limit)


def ours_pipeline(task: str, checkpoint: Path, mode: str, **options):
    """distilkit's pipeline in `mode`: fp32/bf16/int8/auto on the torch checkpoint; onnx-fp32,
    onnx-int8 (dynamic), onnx-int8-static, openvino-fp32/-bf16/-int8 (static) on an export of it."""
    from distilkit import pipeline

    if mode == "onnx-int8-static":
        checkpoint, mode = exported(checkpoint, "onnx-static"), "int8"
    elif mode.startswith(("onnx-", "openvino-")):
        backend, mode = mode.split("-", 1)
        checkpoint = exported(checkpoint, backend)
    return pipeline(task, model=checkpoint, mode=mode, **options)


OURS_MODES = ["fp32", "bf16", "int8", "auto", "onnx-fp32", "onnx-int8", "onnx-int8-static", "openvino-fp32",
              "openvino-bf16", "openvino-int8"]


def padding(task, inputs) -> str:
    """How much of the encoder's work is padding under distilkit's length-grouped batches: the
    most that packing with variable-length attention could save."""
    from distilkit.batching import plan

    features, _ = task.featurize(inputs, task.params())
    lengths = [len(f.input_ids) for f in features]
    groups = plan(lengths, task.max_tokens, task.max_batch)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return (f"{len(features)} windows in {len(groups)} batches: {sum(lengths)} tokens, {padded} with padding "
            f"({100 * (padded - sum(lengths)) / padded:.1f}% padding)")


def optimum_int8_qa(checkpoint: Path, workdir: Path):
    """The transformers QA pipeline over Optimum's dynamically quantized int8 ONNX model, or None
    when optimum-onnx is not installed."""
    try:
        from optimum.onnxruntime import ORTModelForQuestionAnswering, ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig
    except ImportError:
        print("optimum-onnx not installed (pip install -e '.[bench]'): no Optimum reference")
        return None
    import transformers as T

    ORTModelForQuestionAnswering.from_pretrained(checkpoint, export=True).save_pretrained(workdir / "optimum")
    quantizer = ORTQuantizer.from_pretrained(workdir / "optimum")
    quantizer.quantize(save_dir=workdir / "optimum-int8",
                       quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False))
    model = ORTModelForQuestionAnswering.from_pretrained(workdir / "optimum-int8", file_name="model_quantized.onnx")
    return T.pipeline("question-answering", model=model, tokenizer=T.AutoTokenizer.from_pretrained(checkpoint))


def optimum_openvino_qa(checkpoint: Path, workdir: Path, precision: str):
    """The transformers QA pipeline over optimum-intel's OpenVINO model: "bf16" (its fp32 model with
    OpenVINO's bf16 inference precision) or "int8" (NNCF's static quantization with SmoothQuant, what
    optimum-intel's OVQuantizer runs, on the same 128 calibration questions as distilkit's export).
    None when optimum-intel is not installed: `pip install --no-deps optimum-intel==2.2.0
    optimum==2.3.0 openvino-tokenizers==2026.4.1.0` (its declared dependencies would replace torch
    with a build whose torchvision does not match)."""
    try:
        from optimum.intel import OVModelForQuestionAnswering
    except ImportError:
        print("optimum-intel not installed (see benchmarks/pipelines.py): no OpenVINO pipeline reference")
        return None
    import transformers as T

    from distilkit.quantize import calibration_batches, quantize_openvino

    ov_config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
    fp32_dir = workdir / "optimum-openvino"
    if not fp32_dir.is_dir():
        OVModelForQuestionAnswering.from_pretrained(checkpoint, export=True, compile=False).save_pretrained(fp32_dir)
    model_dir = fp32_dir
    if precision == "int8":
        model_dir = workdir / "optimum-openvino-int8"
        if not model_dir.is_dir():
            fp32 = OVModelForQuestionAnswering.from_pretrained(fp32_dir, compile=False)
            names = {i.get_any_name() for i in fp32.model.inputs}
            batches = [{k: v for k, v in b.items() if k in names} for b in calibration_batches(
                checkpoint, "question-answering", DATA / CALIBRATION["question-answering"], 128)]
            fp32.model = quantize_openvino(fp32.model, batches)
            fp32.save_pretrained(model_dir)
            del fp32
    model = OVModelForQuestionAnswering.from_pretrained(model_dir, ov_config=ov_config)
    return T.pipeline("question-answering", model=model, tokenizer=T.AutoTokenizer.from_pretrained(checkpoint))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="fp32", help=f"comma-separated, of {', '.join(OURS_MODES)}; the first is "
                    "the one whose ratios are printed")
    ap.add_argument("--task", default="all", choices=["qa", "fill-mask", "all"])
    ap.add_argument("--no-optimum", action="store_true", help="skip the Optimum and optimum-intel QA references")
    ap.add_argument("--workdir", help="keep the checkpoints and their exports here, and reuse them on the next run")
    args = ap.parse_args(argv)
    modes = args.mode.split(",")
    if set(modes) - set(OURS_MODES):
        ap.error(f"unknown mode {sorted(set(modes) - set(OURS_MODES))[0]!r}; expected some of {', '.join(OURS_MODES)}")
    if not DATA.is_dir():
        print(f"data not found at {DATA}; set DISTILKIT_DATA", file=sys.stderr)
        return 2

    import torch
    import transformers as T

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {T.__version__}, "
          f"mode {args.mode}, n={args.n}, rounds={args.rounds}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.workdir or tmp
        built = all(Path(tmp, name, "config.json").is_file() for name in ("qa", "fill-mask"))
        ckpt = {name: Path(tmp, name) for name in ("qa", "fill-mask")} if built else build_checkpoints(Path(tmp))
        if args.task in ("qa", "all"):
            examples = squad_examples(args.n)
            mine = {m: ours_pipeline("question-answering", ckpt["qa"], m) for m in modes}
            ours = mine[modes[0]]
            ref = T.pipeline("question-answering", model=str(ckpt["qa"]), tokenizer=str(ckpt["qa"]))
            engines = {f"distilkit {m}": (lambda p: lambda: p(examples))(p) for m, p in mine.items()}
            engines["transformers"] = lambda: ref(examples)
            optimum = None if args.no_optimum else optimum_int8_qa(ckpt["qa"], Path(tmp))
            if optimum is not None:
                engines["optimum int8"] = lambda: optimum(examples)
            for precision in () if args.no_optimum else ("bf16", "int8"):
                intel = optimum_openvino_qa(ckpt["qa"], Path(tmp), precision)
                if intel is not None:
                    engines[f"optimum-intel {precision}"] = (lambda p: lambda: p(examples))(intel)
            results.append(compare("question-answering", engines, len(examples), args.rounds))
            agree = [(a["start"], a["end"]) == (b["start"], b["end"]) for a, b in zip(ours(examples), ref(examples))]
            print(f"  same answer spans as the reference: {sum(agree)}/{len(agree)}")
            print(f"  {padding(ours, examples)}")
        if args.task in ("fill-mask", "all"):
            sentences = mask_sentences(args.n)
            mine = {m: ours_pipeline("fill-mask", ckpt["fill-mask"], m) for m in modes}
            ref = T.pipeline("fill-mask", model=str(ckpt["fill-mask"]), tokenizer=str(ckpt["fill-mask"]))
            engines = {f"distilkit {m}": (lambda p: lambda: p(sentences))(p) for m, p in mine.items()}
            engines["transformers"] = lambda: ref(sentences)
            results.append(compare("fill-mask", engines, len(sentences), args.rounds))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
