"""distilkit vs the transformers pipelines, same inputs, same process, alternating rounds.

QA: N questions with their contexts from ../shared/data/squad against the transformers 4.x
question-answering pipeline. Fill-mask: N one-mask sentences from ../shared/data/emotion against
the installed transformers fill-mask pipeline. No DistilBERT weights can be downloaded here, so
both sides load the same randomly initialised DistilBERT-base-sized checkpoints (dim 768, 6
layers) with the real distilbert-base-uncased tokenizer: the compute is the real model's.

    python benchmarks/pipelines.py [--n 256] [--rounds 3] [--mode fp32] [--task qa|fill-mask|all] [--no-optimum]

--mode: fp32, bf16, int8 (torch), or onnx-fp32 / onnx-int8 (a `distilkit export` of the same
checkpoint, run by ONNX Runtime through distilkit's pipeline).

QA also runs against Optimum's int8 ONNX Runtime model in the same transformers pipeline (the
Optimum recipe: `ORTModelForQuestionAnswering` export, then dynamic int8 quantization with
`AutoQuantizationConfig.avx512_vnni`), when optimum-onnx is installed (`pip install -e ".[bench]"`).
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


def ours_pipeline(task: str, checkpoint: Path, mode: str, **options):
    """distilkit's pipeline in `mode`; onnx-fp32/onnx-int8 run a `distilkit export` of the checkpoint
    (written once, beside it)."""
    from distilkit import pipeline

    if mode.startswith("onnx-"):
        from distilkit.export import export_onnx

        exported = checkpoint.with_name(f"{checkpoint.name}-onnx")
        checkpoint = exported if exported.is_dir() else export_onnx(checkpoint, exported, int8=True)
    return pipeline(task, model=checkpoint, mode=mode.removeprefix("onnx-"), **options)


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="fp32", choices=["fp32", "bf16", "int8", "onnx-fp32", "onnx-int8"])
    ap.add_argument("--task", default="all", choices=["qa", "fill-mask", "all"])
    ap.add_argument("--no-optimum", action="store_true", help="skip the Optimum int8 QA reference")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"data not found at {DATA}; set DISTILKIT_DATA", file=sys.stderr)
        return 2

    import torch
    import transformers as T

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {T.__version__}, "
          f"mode {args.mode}, n={args.n}, rounds={args.rounds}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoints(Path(tmp))
        if args.task in ("qa", "all"):
            examples = squad_examples(args.n)
            ours = ours_pipeline("question-answering", ckpt["qa"], args.mode)
            ref = T.pipeline("question-answering", model=str(ckpt["qa"]), tokenizer=str(ckpt["qa"]))
            engines = {f"distilkit {args.mode}": lambda: ours(examples), "transformers": lambda: ref(examples)}
            optimum = None if args.no_optimum else optimum_int8_qa(ckpt["qa"], Path(tmp))
            if optimum is not None:
                engines["optimum int8"] = lambda: optimum(examples)
            results.append(compare("question-answering", engines, len(examples), args.rounds))
            agree = [(a["start"], a["end"]) == (b["start"], b["end"]) for a, b in zip(ours(examples), ref(examples))]
            print(f"  same answer spans as the reference: {sum(agree)}/{len(agree)}")
            print(f"  {padding(ours, examples)}")
        if args.task in ("fill-mask", "all"):
            sentences = mask_sentences(args.n)
            ours = ours_pipeline("fill-mask", ckpt["fill-mask"], args.mode)
            ref = T.pipeline("fill-mask", model=str(ckpt["fill-mask"]), tokenizer=str(ckpt["fill-mask"]))
            results.append(compare("fill-mask", {f"distilkit {args.mode}": lambda: ours(sentences),
                                                 "transformers": lambda: ref(sentences)}, len(sentences), args.rounds))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
