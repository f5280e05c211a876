"""QA throughput by token budget (`max_tokens`, padded tokens per forward pass), per run mode: the
measurement behind batching.default_max_tokens. Same model and questions as pipelines.py (random
DistilBERT-base-sized weights, the real uncased tokenizer, N SQuAD questions); budgets interleaved
round by round in one process by pipelines.compare: medians, and the first budget's ratio to each.

    python benchmarks/token_budget.py [--modes bf16,fp32,int8] [--budgets 1024,1536,2048,3072] [--n 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pipelines import DATA, build_checkpoints, compare, ours_pipeline, squad_examples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="bf16,fp32,int8", help="comma-separated: fp32, bf16, int8, onnx-fp32, onnx-int8")
    ap.add_argument("--budgets", default="1024,1536,2048,3072")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"data not found at {DATA}; set DISTILKIT_DATA", file=sys.stderr)
        return 2

    examples = squad_examples(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        qa = build_checkpoints(Path(tmp))["qa"]
        for mode in args.modes.split(","):
            tasks = {budget: ours_pipeline("question-answering", qa, mode, max_tokens=budget)
                     for budget in map(int, args.budgets.split(","))}
            print(f"question answering, mode {mode}, {len(examples)} questions, median of {args.rounds} rounds:")
            compare(f"mode {mode}", {f"max_tokens {budget}": (lambda t: lambda: t(examples))(task)
                                     for budget, task in tasks.items()}, len(examples), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
