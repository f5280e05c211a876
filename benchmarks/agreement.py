"""Agreement of every fast run mode with fp32, on real fine-tuned weights and real test data.

The models are the MiniLM-L6 checkpoints that docs/finetune.md builds (emotion, CoNLL-2003, and
extractive QA trained with SQuAD v1.1 semantics on the answerable questions of articles 0-11 of the
SQuAD v2 half); each is also exported, in a temporary directory, to ONNX (fp32 + dynamic int8, and
int8 calibrated on 128 training examples of its task) and to OpenVINO (fp32, run fp32 and bf16, and
NNCF's int8 calibrated the same way), as benchmarks/pipelines.py `exported` writes them. For every
mode, on the same inputs:

- text classification (emotion test): label agreement with fp32, accuracy delta;
- token classification (CoNLL-2003 test): word-tag agreement, entity-F1 delta;
- question answering (the 803 answerable questions of articles 12-15): exact-span agreement
  (same start and end offsets), SQuAD v1.1 F1 delta.

    python benchmarks/agreement.py [--modes fp32,bf16,int8,auto,onnx-fp32,onnx-int8,onnx-int8-static,
        openvino-fp32,openvino-bf16,openvino-int8,optimum-int8] [--limit 0] [--checkpoints DIR]

optimum-int8 (question answering only, with optimum-onnx installed): the reference of the speed
target, Optimum's dynamically quantized int8 model in the transformers QA pipeline.

Also prints each mode's examples/s on the whole set (one pass, not interleaved: a rough guide;
benchmarks/speed.py and benchmarks/pipelines.py are the speed measurements).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILKIT_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path("~/.cache/distilkit").expanduser()
QA_PARAMS = dict(max_seq_len=256, doc_stride=128, max_answer_len=30)  # as configs/squad_v2.yaml trains


def predictions(task_name: str, pipe, records: list[dict]):
    """(per-example predictions to compare between modes, the task's headline score)."""
    from distilkit import evaluate as E
    from distilkit.metrics import classification_report, entity_scores, squad_v1

    if task_name == "text-classification":
        labels = [o["label"] for o in pipe.run([r["text"] for r in records], truncation=True)]
        return labels, classification_report([r["label"] for r in records], labels)["accuracy"]
    if task_name == "token-classification":
        outputs = pipe.run([" ".join(r["tokens"]) for r in records], aggregation_strategy="none", ignore_labels=[])
        tags = [E.word_tags(r["tokens"], o) for r, o in zip(records, outputs)]
        return tags, entity_scores([list(r["tags"]) for r in records], tags)["f1"]
    answers = pipe.run([{"question": r["question"], "context": r["context"]} for r in records], **QA_PARAMS)
    spans = [(a["start"], a["end"]) for a in answers]
    return spans, squad_v1(records, {r["id"]: a["answer"] for r, a in zip(records, answers)})["f1"] / 100


class OptimumQA:
    """Optimum's int8 QA pipeline (benchmarks/pipelines.py builds it) behind the task's `run`."""

    def __init__(self, checkpoint: Path, workdir: Path):
        from pipelines import optimum_int8_qa

        self.pipe = optimum_int8_qa(checkpoint, workdir)

    def run(self, inputs: list[dict], **params) -> list[dict]:
        out = self.pipe(inputs, **params)
        return out if isinstance(out, list) else [out]


def agreement(task_name: str, a: list, b: list) -> float:
    if task_name == "token-classification":  # per word
        pairs = [(x, y) for ta, tb in zip(a, b) for x, y in zip(ta, tb)]
        return sum(x == y for x, y in pairs) / len(pairs)
    return sum(x == y for x, y in zip(a, b)) / len(a)


TASKS = {  # task -> (checkpoint, data file, range of articles/records, unit of agreement)
    "text-classification": ("minilm-emotion", "emotion/test.txt", None, "labels"),
    "token-classification": ("minilm-conll", "conll2003/test.txt", None, "word tags"),
    "question-answering": ("minilm-squad1", "squad/dev-v2.0-half.json", "12:16", "spans"),
}
SCORES = {"text-classification": "accuracy", "token-classification": "entity F1", "question-answering": "F1"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="fp32,bf16,int8,auto,onnx-fp32,onnx-int8,onnx-int8-static,openvino-fp32,"
                    "openvino-bf16,openvino-int8,optimum-int8")
    ap.add_argument("--checkpoints", default=str(CACHE), help=f"the fine-tuned models' folder (default {CACHE})")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=0, help="records per task (0: all)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from pipelines import ours_pipeline

    from distilkit.data.readers import read_records

    modes = args.modes.split(",")
    if modes[0] != "fp32":
        modes.insert(0, "fp32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in args.tasks.split(","):
            ckpt, data, select, unit = TASKS[task_name]
            model = Path(args.checkpoints) / ckpt
            if not (model / "config.json").exists():
                print(f"skip {task_name}: no fine-tuned model at {model} (see docs/finetune.md)", file=sys.stderr)
                continue
            records = read_records(task_name, DATA / data, select=select)
            if task_name == "question-answering":  # v1.1 semantics: the answerable questions
                records = [r for r in records if r["answers"]]
            records = records[:args.limit] if args.limit else records
            work = Path(tmp) / ckpt  # exports are written beside this copy of the checkpoint
            shutil.copytree(model, work / "model", ignore=shutil.ignore_patterns("checkpoints", "best"))
            base = None
            for mode in modes:
                if mode == "optimum-int8":
                    pipe = OptimumQA(model, Path(tmp) / f"{ckpt}-optimum") if task_name == "question-answering" else None
                    if pipe is None or pipe.pipe is None:
                        continue
                else:
                    pipe = ours_pipeline(task_name, work / "model", mode, threads=args.threads)
                started = time.perf_counter()
                preds, score = predictions(task_name, pipe, records)
                seconds = time.perf_counter() - started
                base = base or (preds, score)
                rows.append((task_name, mode, len(records), agreement(task_name, base[0], preds), unit,
                             score, score - base[1], len(records) / seconds))
                r = rows[-1]
                print(f"{task_name:21s} {mode:16s} agreement {100 * r[3]:6.2f}% {unit:11s} "
                      f"{SCORES[task_name]} {r[5]:.4f} ({100 * r[6]:+.2f} points)  {r[7]:7.1f} ex/s", flush=True)
    print("\n| task | mode | examples | agreement with fp32 | score | delta (points) | examples/s |")
    print("|---|---|---|---|---|---|---|")
    for task_name, mode, n, agree, unit, score, delta, speed in rows:
        print(f"| {task_name} | {mode} | {n} | {100 * agree:.2f}% {unit} | {SCORES[task_name]} {score:.4f} "
              f"| {100 * delta:+.2f} | {speed:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
