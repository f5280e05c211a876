"""One request at a time: the latency of answering a single SQuAD question or filling a single
mask, the way a real-time endpoint without concurrent traffic sees it, against the transformers
pipelines (and Optimum's int8 QA model, with optimum-onnx installed).

    python benchmarks/latency.py [--n 48] [--warm 200] [--modes fp32,fp32-unpacked,bf16,int8,onnx-int8] [--workdir DIR]

--modes: also auto, onnx-int8-static and openvino-fp32/-bf16/-int8 (see benchmarks/pipelines.py).

Every engine first answers --warm other requests, untimed, as a server that has been up a while has
(oneDNN, behind bf16, int8 and packed fp32, builds a primitive for each new shape it meets); then
all answer the same --n requests, request by request taking turns (the order alternating), so the
host's noise hits each alike, each after a --pause of a quarter second (pipelines.settle: ONNX
Runtime's threads spin on after a run and would slow the engine after them; a quiet endpoint's
request arrives after a pause too). Prints the median and 90th-percentile
milliseconds per request and the ratio of medians to the transformers pipeline. "fp32-unpacked":
distilkit fp32 on a model handed over in memory, which the runtime does not repack (its linear
layers stay on MKL, repacking their weights on every call) — what oneDNN's prepacked weights gain.
Models: DistilBERT-base-sized, random weights with the real tokenizer (as benchmarks/pipelines.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipelines import build_checkpoints, mask_sentences, optimum_int8_qa, ours_pipeline, squad_examples, timed


def engines_for(task: str, checkpoint: Path, modes: list[str]) -> dict:
    import transformers as T

    from distilkit import pipeline
    from distilkit.checkpoint import load_model
    from distilkit.pipelines import task_class

    engines = {"transformers": T.pipeline(task, model=str(checkpoint))}
    for mode in modes:
        if mode == "fp32-unpacked":
            model = load_model(checkpoint, head=task_class(task).head)
            engines[f"distilkit {mode}"] = pipeline(task, model=model, tokenizer=checkpoint)
        else:
            engines[f"distilkit {mode}"] = ours_pipeline(task, checkpoint, mode)
    return engines


def measure(name: str, engines: dict, requests: list, warm: list, pause: float) -> dict:
    def call(engine, request):
        return engine(**request) if isinstance(request, dict) else engine(request)

    for engine in engines.values():
        for request in warm or requests[:1]:
            call(engine, request)
    times = {label: [] for label in engines}
    for i, request in enumerate(requests):
        for label in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            times[label].append(timed(lambda: call(engines[label], request), pause))
    base = statistics.median(times["transformers"])
    print(f"\n{name}, {len(requests)} requests one at a time, after {len(warm)} others (ms per request):")
    print(f"  {'engine':26s} {'median':>8s} {'p90':>8s} {'vs transformers':>16s}")
    out = {"task": name}
    for label, ts in times.items():
        med, p90 = statistics.median(ts), statistics.quantiles(ts, n=10)[-1]
        out[label] = med * 1e3
        print(f"  {label:26s} {med * 1e3:8.1f} {p90 * 1e3:8.1f} {base / med:15.2f}x")
    return out


def primitive_cost(k: int = 768, n: int = 3072) -> None:
    """What a new shape costs oneDNN: one prepacked bf16 (or fp32) k x n product, first called at a
    row count it has not seen (oneDNN builds and JIT-compiles a primitive) and then again."""
    import torch

    from distilkit.runtime import PackedLinear

    for dtype in (torch.bfloat16, torch.float32):
        if not PackedLinear.supported(dtype):
            continue
        layer = PackedLinear(torch.nn.Linear(k, n).to(dtype), 1024)
        first, again = [], []
        with torch.inference_mode():
            for rows in range(301, 341):
                x = torch.randn(rows, k, dtype=dtype)
                for times in (first, again):
                    started = time.perf_counter()
                    layer(x)
                    times.append(time.perf_counter() - started)
        print(f"oneDNN {k} x {n} {str(dtype).removeprefix('torch.')} product, 301-340 rows: first call at a "
              f"new row count {statistics.median(first) * 1e3:.2f} ms, "
              f"the same call again {statistics.median(again) * 1e3:.2f} ms")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="timed requests per task")
    ap.add_argument("--warm", type=int, default=200, help="untimed requests per task and engine first")
    ap.add_argument("--modes", default="fp32,fp32-unpacked,bf16,int8,onnx-int8")
    ap.add_argument("--task", default="all", choices=["qa", "fill-mask", "all"])
    ap.add_argument("--pause", type=float, default=0.25, help="untimed seconds before each request (0: none)")
    ap.add_argument("--workdir", help="keep the checkpoints and their exports here, and reuse them on the next run")
    args = ap.parse_args(argv)

    import torch
    import transformers as T

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {T.__version__}")
    primitive_cost()
    modes = args.modes.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.workdir or tmp
        done = Path(tmp, "qa", "config.json").is_file() and Path(tmp, "fill-mask", "config.json").is_file()
        checkpoints = {name: Path(tmp, name) for name in ("qa", "fill-mask")} if done else build_checkpoints(Path(tmp))
        if args.task in ("qa", "all"):
            engines = engines_for("question-answering", checkpoints["qa"], modes)
            optimum = optimum_int8_qa(checkpoints["qa"], Path(tmp))
            if optimum is not None:
                engines["optimum int8"] = optimum
            examples = squad_examples(args.n + args.warm)
            results.append(measure("question answering", engines, examples[:args.n], examples[args.n:], args.pause))
        if args.task in ("fill-mask", "all"):
            engines = engines_for("fill-mask", checkpoints["fill-mask"], modes)
            sentences = mask_sentences(args.n + args.warm)
            results.append(measure("fill-mask", engines, sentences[:args.n], sentences[args.n:], args.pause))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
