"""Encoder throughput by run mode, against transformers and ONNX Runtime, plus cold start.

Every engine runs the same DistilBERT-base-sized QA model (random weights: none can be
downloaded here; the compute is the real model's) on the same batches, interleaved round by round
in one process because the host is noisy; medians and ratios are printed.

    python benchmarks/speed.py [--batch 8] [--tokens 128] [--rounds 5] [--skip-cold | --cold-only] [--compile] [--fp32-study] [--openvino-study]
        [--pause 0.25] [--no-openvino] [--calibrate 128] [--workdir DIR]

Engines: transformers fp32 (reference), distilkit fp32 / bf16 / int8 (torch; plus fp32 without
row slicing when the batch exceeds the CPU token budget), and, with
onnxruntime installed, distilkit's ONNX export fp32 / int8 (dynamic) / int8 static (calibrated);
with openvino installed, `distilkit export --format openvino` run by OpenVINO: fp32, bf16 and
NNCF's calibrated static int8 (one stream, and two; --no-openvino skips them), and the line the
issue's target quotes: distilkit's fastest torch engine against OpenVINO's fastest; with --compile, fp32 and bf16 under
`torch.compile` (inductor, dynamic shapes), whose warm-up is printed; with --fp32-study, where
distilkit fp32's time goes (the linear layers' share of a profiled pass and their GEMM rate), its
ceiling (those products back to back, and attention, alone) and an
fp32 engine on MKL's prepacked weights, which PyTorch uses only for calls of exactly the row count
packed for (true here, not of length-grouped batches: why distilkit does not ship it). Cold start: a fresh process
from `python -c` to the first answer, torch checkpoint vs exported model. "page faults": the
median of minor page faults per pass (memory the pass had to fault in again; with
DISTILKIT_RETAIN_MEMORY=0 the torch engines' go back to malloc's defaults, see runtime.retain_freed_memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from pipelines import settle

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILKIT_DATA", ROOT.parent / "shared" / "data"))


def build(workdir: Path) -> tuple[Path, Path]:
    import shutil

    import transformers as T

    from distilkit.export import export_onnx

    tok_dir = DATA / "tokenizers" / "distilbert-base-uncased"
    d = workdir / "qa"
    torch.manual_seed(0)
    T.DistilBertForQuestionAnswering(T.DistilBertConfig.from_pretrained(tok_dir)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tok_dir / f, d / f)
    return d, export_onnx(d, workdir / "onnx", int8=True)


def build_calibrated(ckpt: Path, workdir: Path, examples: int) -> dict[str, Path]:
    """The checkpoint's calibrated static int8 exports, each calibrated on the first `examples`
    SQuAD questions (for speed the ranges matter little; agreement.py measures their answers):
    OpenVINO (NNCF; its fp32 model also runs bf16) and ONNX Runtime's static quantizer. Kept in
    `workdir` and reused by a later run with the same --workdir."""
    from distilkit.export import export_onnx, export_openvino

    squad = DATA / "squad" / "dev-v2.0-half.json"
    out = {"openvino": workdir / "openvino", "onnx-static": workdir / "onnx-static"}
    if not (out["openvino"] / "distilkit_export.json").is_file():
        export_openvino(ckpt, out["openvino"], int8=True, calibrate=squad, calibrate_limit=examples)
    if not (out["onnx-static"] / "distilkit_export.json").is_file():
        export_onnx(ckpt, out["onnx-static"], int8=True, calibrate=squad, calibrate_limit=examples)
    return out


def encoder_flops(cfg, batch: int, seq: int) -> float:
    """FLOPs (2 x multiply-adds) of one encoder forward over `batch` sequences of `seq` tokens:
    projections and feed-forward, plus the attention products (QK^T and AV)."""
    return linear_flops(cfg, batch * seq) + attention_flops(cfg, batch, seq)


def linear_flops(cfg, tokens: int) -> float:
    """FLOPs of the encoder's linear layers (q, k, v, output, FFN up and down) over `tokens` tokens."""
    d, f = cfg.dim, cfg.ffn_dim
    return cfg.n_layers * 2 * (4 * d * d + 2 * d * f) * tokens


def attention_flops(cfg, batch: int, seq: int) -> float:
    """FLOPs of the attention products, QK^T and AV, over `batch` sequences of `seq` tokens."""
    return cfg.n_layers * 2 * 2 * seq * cfg.dim * batch * seq


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--cold-only", action="store_true", help="only the cold starts (the exports are built or reused)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile'd fp32 and bf16 engines")
    ap.add_argument("--fp32-study", action="store_true", help="profile fp32, measure its ceiling; add an MKL-packed fp32 engine")
    ap.add_argument("--pause", type=float, default=0.25, help="untimed seconds before each engine's turn (0: none)")
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO engines and the static int8 exports")
    ap.add_argument("--calibrate", type=int, default=128, help="SQuAD questions that calibrate the static int8 "
                    "exports (default 128)")
    ap.add_argument("--openvino-study", action="store_true", help="where OpenVINO's time goes, by operation, at "
                    "8 x 128 and 1 x 200 tokens, each precision's matrix products against its GEMM")
    ap.add_argument("--workdir", help="keep the checkpoint and exports here, and reuse them on the next run")
    args = ap.parse_args(argv)

    import numpy as np
    import transformers as T

    from distilkit.checkpoint import load_model
    from distilkit.runtime import PackedLinear, Runtime, _replace_linears

    tmp = Path(args.workdir or tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    if (tmp / "onnx" / "distilkit_export.json").is_file():
        ckpt, onnx_dir = tmp / "qa", tmp / "onnx"
    else:
        ckpt, onnx_dir = build(tmp)
    if args.cold_only:
        if not args.no_openvino:
            build_calibrated(ckpt, tmp, args.calibrate)
        results: dict = {}
        cold_starts(ckpt, onnx_dir, tmp, args, results)
        print(json.dumps(results))
        return 0
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(args.batch, args.tokens)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    ref = T.DistilBertForQuestionAnswering.from_pretrained(ckpt).eval()
    engines = {"transformers fp32": lambda: _ref_forward(ref, batch)}
    # owned=True, as pipeline() builds them from a checkpoint (fp32 then prepacks its linear layers)
    runtimes = {mode: Runtime(load_model(ckpt), mode=mode, owned=True) for mode in ("fp32", "bf16", "int8")}
    for mode, rt in runtimes.items():
        engines[f"distilkit {mode}"] = (lambda rt: lambda: rt.forward(batch))(rt)
    if args.batch * args.tokens > runtimes["fp32"].max_tokens:  # what slicing into cache-sized rows gains
        whole = Runtime(load_model(ckpt), max_tokens=0, owned=True)
        engines["distilkit fp32 unsliced"] = lambda: whole.forward(batch)
    if args.fp32_study:
        packed = Runtime(load_model(ckpt))
        rows = min(args.batch, max(1, packed.max_tokens // args.tokens)) * args.tokens  # each slice's rows
        _replace_linears(packed.model, lambda m: MklPackedLinear(m, rows))
        engines["distilkit fp32 MKL-packed"] = lambda: packed.forward(batch)
        gap = np.abs(packed.forward(batch) - runtimes["fp32"].forward(batch)).max()
        print(f"MKL-packed fp32 vs distilkit fp32: largest logit difference {gap:.1e}")
    for mode in ("fp32", "bf16") if args.compile else ():  # does inductor pay back its warm-up?
        # Inductor cannot trace oneDNN's prepacked weights: it gets plain bf16 linears (and packs them itself).
        with mock.patch.object(PackedLinear, "supported", return_value=False):
            rt = Runtime(load_model(ckpt), mode=mode)
        rt.model = torch.compile(rt.model, dynamic=True)
        started = time.perf_counter()
        rt.forward(batch)
        print(f"torch.compile {mode}: first call (the warm-up) {time.perf_counter() - started:.1f} s", flush=True)
        engines[f"distilkit {mode} compiled"] = (lambda rt: lambda: rt.forward(batch))(rt)
    try:
        from distilkit.runtime_onnx import OnnxRuntime

        for mode in ("fp32", "int8"):
            ort_rt = OnnxRuntime(onnx_dir, mode=mode)
            engines[f"onnx {mode}"] = (lambda r: lambda: r.forward(batch))(ort_rt)
    except ImportError:
        print("onnxruntime not installed: skipping the ONNX engines")
    if not args.no_openvino:
        openvino_engines(engines, build_calibrated(ckpt, tmp, args.calibrate), batch)

    for fn in engines.values():  # warm-up
        fn()
    times = {name: [] for name in engines}
    faults = {name: [] for name in engines}  # minor page faults per pass: memory faulted in again
    for r in range(args.rounds):
        names = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in names:
            settle(args.pause)  # the engine before has gone idle (ONNX Runtime's threads spin on after a run)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time.perf_counter()
            engines[name]()
            times[name].append(time.perf_counter() - t)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    n_tok = args.batch * args.tokens
    cfg = load_model(ckpt).cfg
    flops = encoder_flops(cfg, args.batch, args.tokens)
    base = statistics.median(times["transformers fp32"])
    roof = gemm_roofline()
    print(f"\nencoder, batch {args.batch} x {args.tokens} tokens, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds; 2048^3 GEMM: fp32 {roof['float32']:.0f} GFLOP/s, "
          f"bf16 {roof['bfloat16']:.0f} GFLOP/s, int8 {roof['int8']:.0f} GOP/s")
    print(f"{'engine':26s} {'tokens/s':>10s} {'GFLOP/s':>9s} {'of fp32 GEMM':>13s} {'of own GEMM':>12s} "
          f"{'vs transformers':>16s} {'page faults':>12s}")
    results = {f"gemm {k} GFLOP/s": v for k, v in roof.items()}  # GOP/s for int8
    int8_rows = []
    for name, ts in times.items():
        m = statistics.median(ts)
        results[name] = n_tok / m
        own = roof["int8" if "int8" in name else "bfloat16" if "bf16" in name else "float32"]  # its precision's GEMM
        if "int8" in name:
            int8_rows.append((name, n_tok / m, flops / m / 1e9 / own))
        print(f"{name:26s} {n_tok / m:10.0f} {flops / m / 1e9:9.1f} {flops / m / 1e9 / roof['float32']:12.0%} "
              f"{flops / m / 1e9 / own:11.0%} {base / m:15.2f}x {statistics.median(faults[name]):12.0f}")

    if not args.no_openvino:  # the target: distilkit's fastest against OpenVINO's fastest
        fastest = max((n for n in results if n.startswith("distilkit")), key=results.get)
        ov = max((n for n in results if n.startswith("openvino")), key=results.get)
        print(f"\nfastest distilkit (torch) engine {fastest!r}: {results[fastest] / results[ov]:.2f}x OpenVINO's "
              f"fastest {ov!r}; int8 engines against the int8 GEMM: "
              + ", ".join(f"{name} {share:.0%}" for name, _, share in int8_rows))
    if args.openvino_study and not args.no_openvino:
        openvino_study(tmp / "openvino", cfg, roof)
    if args.fp32_study:
        linear_share(runtimes["fp32"], batch, cfg, args, roof["float32"])

    if not args.skip_cold:
        cold_starts(ckpt, onnx_dir, tmp, args, results)
    print(json.dumps(results))
    return 0


def openvino_engines(engines: dict, exports: dict[str, Path], batch) -> None:
    """OpenVINO through distilkit's backend (fp32, bf16 where the CPU has it, static int8: one
    stream, as `pipeline()` runs it; and int8 on two streams, OpenVINO's throughput mode), and ONNX
    Runtime's static int8."""
    try:
        from distilkit.runtime_openvino import OpenVINORuntime, cpu_has_bf16
    except ImportError:
        print("openvino not installed (pip install -e '.[openvino]'): skipping the OpenVINO engines")
        return
    from distilkit.runtime_onnx import OnnxRuntime

    for mode in ("fp32", "bf16", "int8") if cpu_has_bf16() else ("fp32", "int8"):
        rt = OpenVINORuntime(exports["openvino"], mode=mode)
        engines[f"openvino {mode}" + (" static" if mode == "int8" else "")] = (lambda r: lambda: r.forward(batch))(rt)
    two = OpenVINORuntime(exports["openvino"], mode="int8", streams=2)
    engines["openvino int8 2 streams"] = lambda: two.forward(batch)
    static = OnnxRuntime(exports["onnx-static"], mode="int8")
    engines["onnx int8 static"] = lambda: static.forward(batch)


def openvino_study(export: Path, cfg, roof: dict[str, float], rounds: int = 5) -> None:
    """OpenVINO's own per-node timings (PERF_COUNT), summed by node type, of the median pass of each
    precision at 8 x 128 and 1 x 200 tokens: the matrix products' share and rate against the GEMM of
    their precision, and the biggest other costs."""
    import numpy as np
    import openvino as ov

    from distilkit.runtime_openvino import FILES, cpu_has_bf16

    core = ov.Core()
    precisions = [("fp32", "f32", "float32"), ("int8", "f32", "int8")]
    if cpu_has_bf16():
        precisions[1:1] = [("bf16", "bf16", "bfloat16")]
    print("\nOpenVINO, where the time goes (its per-node timings, median pass):")
    for B, T in ((8, 128), (1, 200)):
        ids = np.random.default_rng(0).integers(1000, 20000, size=(B, T))
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        for mode, hint, gemm in precisions:
            file = FILES["int8" if mode == "int8" else "fp32"]
            request = core.compile_model(str(export / file), "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": hint,
                                                                       "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            request.infer(feed)
            passes = []
            for _ in range(rounds):
                started = time.perf_counter()
                request.infer(feed)
                by_type: dict[str, float] = {}
                for node in request.profiling_info:
                    by_type[node.node_type] = by_type.get(node.node_type, 0.0) + node.real_time.total_seconds()
                passes.append((time.perf_counter() - started, by_type))
            wall, by_type = sorted(passes, key=lambda p: p[0])[len(passes) // 2]
            total = sum(by_type.values())
            products = sum(v for k, v in by_type.items() if k.startswith("FullyConnected"))
            rate = linear_flops(cfg, B * T) / (products / total * wall) / 1e9
            others = sorted(((v, k) for k, v in by_type.items() if not k.startswith("FullyConnected")), reverse=True)
            print(f"  {B} x {T} {mode:4s}: {wall * 1e3:6.1f} ms, {B * T / wall:6.0f} tok/s; linear layers "
                  f"{products / total:.0%} at {rate:.0f} GOP/s ({rate / roof[gemm]:.0%} of the {gemm} GEMM); "
                  + ", ".join(f"{k} {v / total:.0%}" for v, k in others[:5]))


def cold_starts(ckpt: Path, onnx_dir: Path, tmp: Path, args, results: dict) -> None:
    """A fresh `python -c` process per engine, from launch to the printed answer."""
    print("\ncold start to the first answer (fresh process, median of 3):")
    snippet = ("from distilkit import pipeline; "
               "qa = pipeline('question-answering', model={m!r}, mode={mode!r}); "
               "answer = qa(question='Who?', context='Bob is sitting next to Alice.')['answer']; "
               "print('answer:', repr(answer), flush=True)")
    cold = [("torch checkpoint", ckpt, "fp32"), ("exported onnx fp32", onnx_dir, "fp32"),
            ("exported onnx int8", onnx_dir, "int8")]
    if not args.no_openvino:  # the first run compiles and caches; the runs measured load the cache
        cold += [("openvino fp32", tmp / "openvino", "fp32"), ("openvino int8", tmp / "openvino", "int8"),
                 ("openvino bf16", tmp / "openvino", "bf16")]
    for label, model, mode in cold:
        cold_start(snippet.format(m=str(model), mode=mode))
        runs = [cold_start(snippet.format(m=str(model), mode=mode)) for _ in range(3)]
        answered, exited = (statistics.median(r[i] for r in runs) for i in (0, 1))
        results[f"cold {label} s"] = answered
        print(f"  {label:20s} {answered:.2f} s to the answer ({exited:.2f} s to the process's exit)")


def cold_start(code: str) -> tuple[float, float]:
    """Seconds from launching `python -c code` to its first line of output (the answer), and to its exit."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    answered = time.perf_counter() - started
    _, err = proc.communicate()
    if proc.returncode or not line.strip():
        raise RuntimeError(f"cold-start run failed: {err}")
    return answered, time.perf_counter() - started


def gemm_roofline(rounds: int = 10) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of a 2048^3 matrix product in fp32, bf16 and int8 with torch's
    threads: what the machine allows, so the best of `rounds` (the host's noise only ever slows a
    round down)."""

    out = {}
    for dtype in (torch.float32, torch.bfloat16, torch.int8):
        if dtype == torch.int8:  # int8 x int8 -> int32, oneDNN's kernels (AMX where the CPU has it)
            a, b = (torch.randint(-128, 128, (2048, 2048), dtype=dtype) for _ in range(2))
            product = torch._int_mm
        else:
            a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
            product = torch.matmul
        product(a, b)
        ts = []
        for _ in range(rounds):
            t = time.perf_counter()
            product(a, b)
            ts.append(time.perf_counter() - t)
        out[str(dtype).removeprefix("torch.")] = 2 * 2048 ** 3 / min(ts) / 1e9
    return out


class MklPackedLinear(torch.nn.Module):
    """An fp32 linear on MKL's prepacked weight (what inductor's freezing uses for fp32). PyTorch runs
    the packed product only for inputs of exactly `rows` rows and a plain one otherwise."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        super().__init__()
        self.rows, self.weight, self.bias = rows, linear.weight.detach(), linear.bias.detach()
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, self.rows)


def linear_share(runtime, batch, cfg, args, roof: float, passes: int = 3) -> None:
    """Profile `passes` forward passes: the linear layers' share of the time and their GFLOP/s."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(passes):
            runtime.forward(batch)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    linear_ops = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise")
    gemm = sum(e.self_cpu_time_total for e in events if e.key in linear_ops) / 1e6
    rate = passes * linear_flops(cfg, args.batch * args.tokens) / gemm / 1e9
    print(f"\ndistilkit fp32, {passes} profiled passes: linear layers {gemm / total:.0%} of the time at "
          f"{rate:.0f} GFLOP/s ({rate / roof:.0%} of the 2048^3 GEMM); the rest: "
          + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e6 / total:.0%}"
                      for e in [e for e in events if e.key not in linear_ops][:5]))
    ceiling(runtime, cfg, args, roof)


def ceiling(runtime, cfg, args, roof: float, rounds: int = 7) -> None:
    """The most this fp32 encoder could reach with everything but its products free: the pass's
    linear layers run back to back on one slice's rows (no attention, GELU or norms in between), and
    its attention alone on that slice's sequences; the encoder's FLOPs over their summed median time."""
    import torch.nn.functional as F

    from distilkit.runtime import PackedLinear

    seqs = min(args.batch, max(1, runtime.max_tokens // args.tokens))  # sequences per slice of rows
    rows, slices = seqs * args.tokens, -(-args.batch // seqs)
    linears = [m for m in runtime.model.encoder.layers.modules() if isinstance(m, PackedLinear)]
    if not linears:
        print("ceiling: this torch has no oneDNN linear layers to time")
        return
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in linears}
    hd = cfg.dim // cfg.n_heads
    q, k, v = (torch.randn(seqs, cfg.n_heads, args.tokens, hd) for _ in range(3))  # no mask: no padding here

    def products():
        for m in linears:
            m(inputs[m.in_features])

    def attention():
        for _ in range(cfg.n_layers):
            F.scaled_dot_product_attention(q, k, v)

    times = {}
    for name, fn in (("products", products), ("attention", attention)):
        fn()
        ts = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        times[name] = statistics.median(ts) * slices
    work = {"products": linear_flops(cfg, args.batch * args.tokens), "attention": attention_flops(cfg, args.batch, args.tokens)}
    rate = {k: work[k] / times[k] / 1e9 / roof for k in work}
    best = sum(work.values()) / sum(times.values()) / 1e9 / roof
    print(f"ceiling, {slices} slices of {rows} rows: the linear layers alone, back to back, {rate['products']:.0%} "
          f"of the 2048^3 GEMM; attention alone {rate['attention']:.0%}; both and nothing else: {best:.0%}")


def _ref_forward(ref, batch):

    with torch.inference_mode():
        out = ref(input_ids=torch.from_numpy(batch["input_ids"]), attention_mask=torch.from_numpy(batch["attention_mask"]))
        return out.start_logits.numpy()


if __name__ == "__main__":
    sys.exit(main())
