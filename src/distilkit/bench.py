"""`distilkit bench`: how fast each run mode runs your model on this machine.

Every mode runs the model's forward pass (encoder and head, through the runtime `pipeline()` would
use: the same prepacking, length buckets and row slicing) on the same random token ids, round by
round in one process, so that a noisy host slows every mode alike; it prints the median tokens/s,
the speed-up over the first mode and the largest logit difference from it. Speed only: how often a
mode's answers agree with fp32's on your data is `distilkit evaluate --mode ...` (and, for the
README's models, benchmarks/agreement.py). The repository's benchmarks/ compare against the
reference stacks (transformers, ONNX Runtime, Optimum).

    distilkit bench --model DIR [--modes fp32,bf16,int8] [--batch 8] [--tokens 128] [--rounds 5]

Default modes: fp32, bf16 where it computes natively (AVX512-BF16/AMX, or a GPU), int8 on a CPU;
for a `distilkit export` directory, the models it holds (OpenVINO's fp32 model runs as bf16 too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .config import MODES
from .errors import InputError


def default_modes(path: str | Path, device: str | None = None) -> list[str]:
    """The modes worth measuring for the model directory `path` here (see the module doc)."""
    from .runtime_onnx import EXPORT_META, FILES, is_export

    path = Path(path)
    if is_export(path):
        from . import runtime_openvino

        files = json.loads((path / EXPORT_META).read_text())["files"]
        if runtime_openvino.export_format(path) == "openvino":
            return runtime_openvino.modes(files)
        return [m for m, f in FILES.items() if f in files]
    from .runtime import cpu_has_bf16, default_device

    cuda = default_device(device).type != "cpu"
    return ["fp32"] + (["bf16"] if cuda or cpu_has_bf16() else []) + ([] if cuda else ["int8"])


def example_batch(cfg, batch: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids of ordinary tokens (above the first 1,000 ids, where vocabularies keep their
    special and unused ones), no padding."""
    if not 1 <= tokens <= cfg.max_length:
        raise InputError(f"tokens must be between 1 and {cfg.max_length} (this model's positions), got {tokens}",
                         "tokens")
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}", "batch")
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, cfg.vocab_size // 2), cfg.vocab_size, size=(batch, tokens), dtype=np.int64)
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if cfg.type_vocab_size:
        out["token_type_ids"] = np.zeros_like(ids)
    return out


def run(model: str | Path, modes: list[str] | None = None, batch: int = 8, tokens: int = 128, rounds: int = 5,
        device: str | None = None, threads: int | None = None, pause: float = 0.25) -> list[dict]:
    """One row per mode: {"mode", "tokens_per_s", "speedup", "max_logit_diff"}, against the first mode.
    pause: idle seconds before each timed pass, so that one engine's lingering threads (ONNX
    Runtime's spin for tens of milliseconds after a run) do not slow the next."""
    from .hub import resolve
    from .pipelines import load_runtime

    path = resolve(model)
    modes = modes or default_modes(path, device)
    # before loading any: a bad name last in the list would otherwise surface after the others loaded
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"unknown mode {unknown[0]!r}; expected some of {', '.join(MODES)}", "modes")
    if rounds < 1:
        raise InputError(f"rounds must be at least 1, got {rounds}", "rounds")
    runtimes = {m: load_runtime(path, device=device, mode=m, threads=threads) for m in modes}
    first = runtimes[modes[0]]
    inputs = example_batch(first.cfg, batch, tokens)
    # Masked-LM heads project one masked position per row, as fill-mask does, not the whole vocabulary
    # at every token.
    positions = (np.arange(batch, dtype=np.int64) * tokens + min(1, tokens - 1)
                 if first.model.head_name == "masked-lm" else None)
    logits = {m: r.forward(inputs, positions) for m, r in runtimes.items()}  # also the warm-up
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for m, r in runtimes.items():
            time.sleep(pause)
            started = time.perf_counter()
            r.forward(inputs, positions)
            seconds[m].append(time.perf_counter() - started)
    speed = {m: batch * tokens / statistics.median(s) for m, s in seconds.items()}
    return [{"mode": m, "tokens_per_s": speed[m], "speedup": speed[m] / speed[modes[0]],
             "max_logit_diff": float(np.abs(logits[m] - logits[modes[0]]).max())} for m in modes]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="distilkit bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True,
                    help="local directory (a checkpoint or a `distilkit export` output) or hub id")
    ap.add_argument("--modes", help=f"comma-separated, the first the baseline (of {', '.join(MODES)}; default: above)")
    ap.add_argument("--batch", type=int, default=8, help="rows per forward pass (default 8)")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per row (default 128)")
    ap.add_argument("--rounds", type=int, default=5, help="timed passes per mode; the median counts (default 5)")
    ap.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's or ONNX Runtime's choice)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    from .hub import CheckpointError, ModelNotFoundError

    try:
        rows = run(args.model, args.modes.split(",") if args.modes else None, args.batch, args.tokens,
                   args.rounds, args.device, args.threads)
    except (InputError, CheckpointError, ModelNotFoundError) as e:
        ap.error(str(e))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model}: batch {args.batch} x {args.tokens} tokens, median of {args.rounds} rounds, "
          f"{args.threads or 'default'} threads on {os.cpu_count()} cores")
    print(f"{'mode':6s} {'tokens/s':>10s} {'vs ' + rows[0]['mode']:>9s} {'max |logit diff|':>17s}")
    for r in rows:
        print(f"{r['mode']:6s} {r['tokens_per_s']:10,.0f} {r['speedup']:8.2f}x {r['max_logit_diff']:17.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
