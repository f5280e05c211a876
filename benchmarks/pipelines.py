"""distilkit vs the transformers pipelines, same inputs, same process, alternating rounds.

QA: N questions with their contexts from ../shared/data/squad against the transformers 4.x
question-answering pipeline. Fill-mask: N one-mask sentences from ../shared/data/emotion against
the installed transformers fill-mask pipeline. No DistilBERT weights can be downloaded here, so
both sides load the same randomly initialised DistilBERT-base-sized checkpoints (dim 768, 6
layers) with the real distilbert-base-uncased tokenizer: the compute is the real model's.

    python benchmarks/pipelines.py [--n 256] [--rounds 3] [--mode fp32] [--task qa|fill-mask|all]

Prints examples/s per side (median over rounds) and the ratio.
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


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(name: str, ours, ref, n: int, rounds: int) -> dict:
    ours()  # warm-up both sides (first-call allocations, thread pools)
    ref()
    t_ours, t_ref = [], []
    for r in range(rounds):  # alternate, so machine noise hits both sides alike
        first, second = (ours, ref) if r % 2 == 0 else (ref, ours)
        a, b = timed(first), timed(second)
        (t_ours, t_ref)[r % 2].append(a)
        (t_ref, t_ours)[r % 2].append(b)
        print(f"  round {r + 1}: distilkit {n / t_ours[-1]:.1f}/s, transformers {n / t_ref[-1]:.1f}/s", flush=True)
    ours_rate, ref_rate = n / statistics.median(t_ours), n / statistics.median(t_ref)
    print(f"{name}: distilkit {ours_rate:.1f} ex/s | transformers {ref_rate:.1f} ex/s | ratio {ours_rate / ref_rate:.2f}x")
    return {"task": name, "distilkit": ours_rate, "transformers": ref_rate, "ratio": ours_rate / ref_rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", default="fp32", choices=["fp32", "bf16", "int8"])
    ap.add_argument("--task", default="all", choices=["qa", "fill-mask", "all"])
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"data not found at {DATA}; set DISTILKIT_DATA", file=sys.stderr)
        return 2

    import torch
    import transformers as T

    from distilkit import pipeline

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {T.__version__}, "
          f"mode {args.mode}, n={args.n}, rounds={args.rounds}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoints(Path(tmp))
        if args.task in ("qa", "all"):
            examples = squad_examples(args.n)
            ours = pipeline("question-answering", model=ckpt["qa"], mode=args.mode)
            ref = T.pipeline("question-answering", model=str(ckpt["qa"]), tokenizer=str(ckpt["qa"]))
            results.append(compare("question-answering", lambda: ours(examples), lambda: ref(examples),
                                   len(examples), args.rounds))
            agree = [(a["start"], a["end"]) == (b["start"], b["end"]) for a, b in zip(ours(examples), ref(examples))]
            print(f"  same answer spans as the reference: {sum(agree)}/{len(agree)}")
        if args.task in ("fill-mask", "all"):
            sentences = mask_sentences(args.n)
            ours = pipeline("fill-mask", model=ckpt["fill-mask"], mode=args.mode)
            ref = T.pipeline("fill-mask", model=str(ckpt["fill-mask"]), tokenizer=str(ckpt["fill-mask"]))
            results.append(compare("fill-mask", lambda: ours(sentences), lambda: ref(sentences),
                                   len(sentences), args.rounds))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
