"""`distilkit batch` against a transformers 4.x question-answering pipeline called record by record.

Records: the first N questions (with their contexts) of ../shared/data/squad/dev-v2.0-half.json,
written as JSONL. Model: no DistilBERT weights can be downloaded here, so both sides load one randomly
initialised DistilBERT-base-sized QA checkpoint (dim 768, 6 layers, 12 heads, hidden 3072) saved with
transformers' `save_pretrained`, with the real distilbert-base-uncased tokenizer: the compute is the
real model's. Both sides are timed end to end, file in -> file out, model loading included.

    python benchmarks/batch_qa.py [--limit 5000] [--mode fp32] [--chunk-size 2048] [--skip-reference]

Prints records/s per side (wall clock) and records per CPU-second (user + system time of this
process, all threads: steadier than wall clock on a shared machine), the ratios, and how often the
two sides give the same answer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILKIT_DATA", ROOT.parent / "shared" / "data"))


def build_model(directory: Path) -> Path:
    """A DistilBERT-base-sized QA model (random weights) and the real uncased tokenizer."""
    import torch
    import transformers as T

    tok_dir = DATA / "tokenizers" / "distilbert-base-uncased"
    torch.manual_seed(0)
    T.DistilBertForQuestionAnswering(T.DistilBertConfig.from_pretrained(tok_dir)).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tok_dir / name).exists():
            shutil.copy(tok_dir / name, directory / name)
    return directory


def write_records(path: Path, limit: int) -> int:
    squad = json.loads((DATA / "squad" / "dev-v2.0-half.json").read_text(encoding="utf-8"))
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for article in squad["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    if n == limit:
                        return n
                    f.write(json.dumps({"id": qa["id"], "question": qa["question"], "context": paragraph["context"]},
                                       ensure_ascii=False) + "\n")
                    n += 1
    return n


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(*args)."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def run_distilkit(records: Path, model: Path, out: Path, mode: str, chunk_size: int | None) -> None:
    from distilkit.batch import run_batch

    report = run_batch(input=str(records), output=str(out), task="question-answering", model=str(model), mode=mode,
                       chunk_size=chunk_size, overwrite=True, progress="lines", progress_interval=30)
    assert report.errors == 0, f"{report.errors} bad records, see {report.errors_path}"


def run_reference(records: Path, model: Path, out: Path) -> None:
    """What a user writes today: load the pipeline, loop over the file, one call per record."""
    import transformers

    qa = transformers.pipeline("question-answering", model=str(model), tokenizer=str(model), device=-1)
    with open(records, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as w:
        for line in f:
            r = json.loads(line)
            result = qa(question=r["question"], context=r["context"])
            w.write(json.dumps({"id": r["id"], "result": result}) + "\n")


def agreement(a: Path, b: Path) -> tuple[int, int, float]:
    """(same answer span, records, largest score difference) between two outputs."""
    ours = {r["id"]: r["result"] for r in map(json.loads, a.read_text(encoding="utf-8").splitlines())}
    same, n, worst = 0, 0, 0.0
    for r in map(json.loads, b.read_text(encoding="utf-8").splitlines()):
        mine, theirs = ours[r["id"]], r["result"]
        n += 1
        if (mine["start"], mine["end"], mine["answer"]) == (theirs["start"], theirs["end"], theirs["answer"]):
            same += 1
            worst = max(worst, abs(mine["score"] - float(theirs["score"])))
    return same, n, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=5000, help="records (default 5000; the file has 6078)")
    parser.add_argument("--mode", default="fp32", choices=["fp32", "bf16", "int8"], help="distilkit run mode")
    parser.add_argument("--chunk-size", type=int, default=None, help="distilkit records per chunk (default 2048)")
    parser.add_argument("--skip-reference", action="store_true", help="time distilkit only")
    parser.add_argument("--workdir", help="keep the model, records and outputs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not (DATA / "squad" / "dev-v2.0-half.json").exists():
        print(f"SQuAD data not found under {DATA} (see the README: ../shared/data)", file=sys.stderr)
        return 2

    import torch
    import transformers

    work = Path(args.workdir or tempfile.mkdtemp(prefix="distilkit-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        build_model(model)
    records = work / "records.jsonl"
    n = write_records(records, args.limit)
    print(f"{n} SQuAD v2 records; DistilBERT-base-sized QA model (random weights); torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", flush=True)

    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    ours, ours_cpu = timed(run_distilkit, records, model, work / "distilkit.jsonl", args.mode, args.chunk_size)
    print(f"distilkit batch ({args.mode}): {n / ours:7.2f} records/s, {n / ours_cpu:7.2f} records/CPU-s "
          f"({ours:.1f}s wall, {ours_cpu:.1f}s CPU)", flush=True)
    if args.skip_reference:
        return 0
    print(f"load average between: {os.getloadavg()[0]:.1f}", flush=True)
    theirs, theirs_cpu = timed(run_reference, records, model, work / "reference.jsonl")
    print(f"transformers pipeline loop : {n / theirs:7.2f} records/s, {n / theirs_cpu:7.2f} records/CPU-s "
          f"({theirs:.1f}s wall, {theirs_cpu:.1f}s CPU)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"ratio: {theirs / ours:.2f}x wall clock, {theirs_cpu / ours_cpu:.2f}x CPU time")
    same, total, worst = agreement(work / "distilkit.jsonl", work / "reference.jsonl")
    print(f"same answer span on {same}/{total} records; largest score difference there {worst:.1e}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
