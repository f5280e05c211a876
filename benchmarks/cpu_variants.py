"""Variants of the torch runtime that were measured and not shipped, so the verdicts can be rerun.

    python benchmarks/cpu_variants.py [--rounds 5] [--n 128] [--workdir DIR]

1. torch's int8 kernels: the encoder (8 x 128 tokens) and QA end to end (N SQuAD questions) with
   the int8 linear layers packed for each quantized engine this torch has (x86, torch's default
   on x86; fbgemm; onednn: what DISTILKIT_INT8_ENGINE picks). distilkit uses oneDNN's on AMX only.
2. "Streams" in torch: each batch split in two halves, run at once by two threads of one intra-op
   thread each (what OpenVINO's throughput streams do), against the whole batch on two threads,
   for fp32, bf16 and int8.

Engines alternate round by round in one process (pipelines.compare); the same DistilBERT-base-
sized QA checkpoint with random weights and the real tokenizer as benchmarks/pipelines.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from pipelines import build_checkpoints, compare, squad_examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=128, help="SQuAD questions end to end")
    ap.add_argument("--workdir", help="keep the checkpoint here and reuse it")
    args = ap.parse_args(argv)

    from distilkit import pipeline
    from distilkit.checkpoint import load_model
    from distilkit.runtime import Runtime

    tmp = Path(args.workdir or tempfile.mkdtemp())
    ckpt = tmp / "qa" if (tmp / "qa" / "config.json").is_file() else build_checkpoints(tmp)["qa"]
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(8, 128)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    reps, tokens = 3, ids.size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quantized engines "
          f"{torch.backends.quantized.supported_engines}")

    engines = [e for e in ("x86", "fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]
    int8: dict[str, Runtime] = {}
    qa: dict = {}
    for engine in engines:  # the engine is read when the model is quantized
        os.environ["DISTILKIT_INT8_ENGINE"] = engine
        int8[engine] = Runtime(load_model(ckpt), mode="int8", owned=True)
        qa[engine] = pipeline("question-answering", model=ckpt, mode="int8")
    os.environ.pop("DISTILKIT_INT8_ENGINE")
    results = [compare("encoder 8 x 128, int8 kernels (tokens/s)",
                       {f"int8 {e}": (lambda rt: lambda: [rt.forward(batch) for _ in range(reps)])(rt)
                        for e, rt in int8.items()}, reps * tokens, args.rounds)]
    questions = squad_examples(args.n)
    results.append(compare(f"QA end to end, {args.n} questions, int8 kernels (questions/s)",
                           {f"int8 {e}": (lambda p: lambda: p(questions))(p) for e, p in qa.items()},
                           len(questions), max(3, args.rounds // 2)))

    pool = concurrent.futures.ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,))
    runtimes = {mode: Runtime(load_model(ckpt), mode=mode, owned=True) for mode in ("fp32", "bf16", "int8")}
    two: dict = {}
    for mode, rt in runtimes.items():
        two[f"{mode} 1 x 2 threads"] = (lambda rt: lambda: [rt.forward(batch) for _ in range(reps)])(rt)
        two[f"{mode} 2 x 1 thread"] = (lambda rt: lambda: [list(pool.map(rt.forward, halves))
                                                           for _ in range(reps)])(rt)
        whole, split = rt.forward(batch), np.concatenate(list(pool.map(rt.forward, halves)))
        print(f"{mode}: halves vs whole batch, largest logit difference {np.abs(whole - split).max():.1e}")
    results.append(compare("encoder 8 x 128, one batch vs two halves at once (tokens/s)", two, reps * tokens,
                           args.rounds))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
