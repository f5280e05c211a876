"""Load test of `distilkit serve` on loopback: dynamic batching vs a batch size of 1.

Starts two servers in subprocesses on free 127.0.0.1 ports — one with the default dynamic
batching, one with --max-batch-size 1 — and drives each in turn, in alternating rounds, with N
concurrent keep-alive clients for a fixed time (a minimal asyncio HTTP/1.1 client, so that the client costs little of the
machine's CPU). Prints throughput, p50/p99 latency and the error count of each run and the ratio.

No weights can be downloaded here: without --model the server loads a randomly initialised
checkpoint of the chosen size (default "small": dim 256, 4 layers; "base" is DistilBERT-base:
dim 768, 6 layers), with the real
distilbert-base-uncased tokenizer from ../shared/data when present (else one trained here).
Inputs: SQuAD dev questions (question-answering) or emotion sentences (fill-mask with one
word masked, text-classification) from ../shared/data, else built-in sentences.

    python benchmarks/serve_load.py [--task text-classification|fill-mask|question-answering]
        [--clients 32] [--duration 15] [--size small|base|tiny] [--model DIR] [--json]

Exits with 1 when the target (dynamic >= 3x batch-1 throughput, no errors) is missed.

    python benchmarks/serve_load.py --storm [--storm-clients 200] [--polite-clients 8] [--max-queue 8]
        [--pin-client]

A retry storm instead: one server with a small --max-queue, driven in alternating rounds by a
few polite clients (each waits for its answer) and by many impatient ones that retry 50 ms
after every 503. Goodput is answers (200) per second; the target is storm >= 70% of polite.
--pin-client runs this client on the last CPU and the server on the others (its torch threads
one fewer), so that the storm's own retries, which on a real endpoint come from other machines,
take no CPU from the server in either round.

Only loopback addresses are used; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DISTILKIT_DATA", ROOT.parent / "shared" / "data"))
HEADS = {"question-answering": "DistilBertForQuestionAnswering", "fill-mask": "DistilBertForMaskedLM",
         "text-classification": "DistilBertForSequenceClassification"}
SIZES = {  # DistilBertConfig fields
    "base": dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072),
    "small": dict(dim=256, n_layers=4, n_heads=4, hidden_dim=1024),
    "tiny": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37),
}
FALLBACK_SENTENCES = [
    "My name is John and I live in Seattle.", "Paris is the capital of France and its largest city.",
    "Today is a beautiful day and the weather is glorious.", "The Normans gave their name to Normandy in France.",
    "Machine learning models such as DistilBERT are smaller, faster, cheaper and lighter.",
    "Alice is sitting on the bench and Bob is sitting next to her.",
    "Hugging Face is a company based in New York City with its headquarters in DUMBO.",
]


# ---------------------------------------------------------------------------------------- model and data
def build_checkpoint(workdir: Path, task: str, size: str) -> Path:
    import torch
    import transformers as T

    d = workdir / f"{task}-{size}"
    tok_dir = DATA / "tokenizers" / "distilbert-base-uncased"
    if not (tok_dir / "tokenizer.json").is_file():
        from tokenizers.implementations import BertWordPieceTokenizer

        tok_dir = workdir / "tokenizer"
        tok_dir.mkdir(parents=True, exist_ok=True)
        tok = BertWordPieceTokenizer(lowercase=True)
        tok.train_from_iterator(FALLBACK_SENTENCES * 4, vocab_size=500, min_frequency=1,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok.save_model(str(tok_dir))
        T.BertTokenizerFast(vocab_file=str(tok_dir / "vocab.txt"), do_lower_case=True).save_pretrained(str(tok_dir))
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = T.DistilBertConfig(vocab_size=len(vocab), **SIZES[size])
    if task == "text-classification":
        cfg.id2label = {0: "sadness", 1: "joy", 2: "love", 3: "anger", 4: "fear", 5: "surprise"}
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(0)
    getattr(T, HEADS[task])(cfg).eval().save_pretrained(str(d))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tok_dir / f).is_file():
            shutil.copy(tok_dir / f, d / f)
    return d


def request_bodies(task: str, n: int = 512) -> list[bytes]:
    """Seed-card shaped bodies, one input each."""
    rng = random.Random(0)
    squad = DATA / "squad" / "dev-v2.0-half.json"
    emotion = DATA / "emotion" / "test.txt"
    if task == "question-answering":
        if squad.is_file():
            data = json.loads(squad.read_text())
            pairs = [(qa["question"], p["context"]) for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
        else:
            pairs = [("Who or what is this about?", s) for s in FALLBACK_SENTENCES]
        rng.shuffle(pairs)
        return [json.dumps({"input_data": {"question": q, "context": c}}).encode() for q, c in pairs[:n]]
    sentences = ([line.rsplit(";", 1)[0] for line in emotion.read_text().splitlines()] if emotion.is_file()
                 else FALLBACK_SENTENCES)
    rng.shuffle(sentences)
    bodies = []
    for s in sentences[:n]:
        if task == "fill-mask":
            words = s.split()
            words[rng.randrange(len(words))] = "[MASK]"
            bodies.append(json.dumps({"inputs": {"input_string": [" ".join(words)]}, "parameters": {"top_k": 5}}).encode())
        else:
            bodies.append(json.dumps({"input_data": [s]}).encode())
    return bodies


# ---------------------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(task: str, model: Path, port: int, extra: list[str], log: Path,
                 cpus: set[int] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "distilkit.serve", "--task", task, "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log", "--log-level", "warning", "--max-queue", "1024", *extra]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=pin)
    deadline = time.monotonic() + 300  # the machine may be shared and loaded
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after 300 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------- client
async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (port, len(body)) + body)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _client(port: int, conn: tuple, bodies: list[bytes], start: int, stop_at: float, record: bool,
                  latencies: list[float], errors: list[str]) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = conn
    i = start
    try:
        while loop.time() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(_one(reader, writer, port, body), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors.append(type(e).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if record:
                if status == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors.append(f"{status} {payload[:120]!r}")
    finally:
        writer.close()


async def measure(port: int, bodies: list[bytes], clients: int, seconds: float, record: bool = True) -> dict:
    """`clients` concurrent keep-alive clients for `seconds`: latencies of the 200s, and errors.
    Connections are opened first: the clock measures serving, not connection set-up."""
    loop = asyncio.get_running_loop()
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(clients)))
    latencies: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    stop_at = loop.time() + seconds
    await asyncio.gather(*(_client(port, conn, bodies, i * 7, stop_at, record, latencies, errors)
                           for i, conn in enumerate(conns)))
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - t0}


async def _storm_client(port: int, body_list: list[bytes], start: int, stop_at: float, retry_s: float,
                        stats: dict) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while loop.time() < stop_at:
            try:
                status, _ = await asyncio.wait_for(_one(reader, writer, port, body_list[i % len(body_list)]), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                stats["errors"].append(type(e).__name__)
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if status == 200:
                stats["ok"] += 1
                i += 1
            elif status == 503:
                stats["rejected"] += 1
                await asyncio.sleep(retry_s)  # the same body again, soon
            else:
                stats["errors"].append(str(status))
    finally:
        writer.close()


async def storm_round(port: int, body_list: list[bytes], clients: int, seconds: float, retry_s: float) -> dict:
    stats: dict = {"ok": 0, "rejected": 0, "errors": []}
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    stop_at = loop.time() + seconds
    await asyncio.gather(*(_storm_client(port, body_list, i * 7, stop_at, retry_s, stats) for i in range(clients)))
    return {**stats, "seconds": time.perf_counter() - t0}


def storm(args, model: Path, bodies: list[bytes], workdir: Path) -> int:
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = set(cpus[:-1]) if args.pin_client and len(cpus) > 1 else None
    threads = args.threads or (len(server_cpus) if server_cpus else None)
    flags = ["--max-queue", str(args.max_queue)] + (["--threads", str(threads)] if threads else [])
    proc = start_server(args.task, model, port, flags, workdir / "storm.log", server_cpus)
    if server_cpus:
        os.sched_setaffinity(0, {cpus[-1]})
    try:
        asyncio.run(storm_round(port, bodies, args.polite_clients, args.warmup, 0.05))
        rounds: dict[str, list[dict]] = {"polite": [], "storm": []}
        for _ in range(args.rounds):
            for name, clients in (("polite", args.polite_clients), ("storm", args.storm_clients)):
                rounds[name].append(asyncio.run(storm_round(port, bodies, clients, args.duration / args.rounds, 0.05)))
    finally:
        stop_server(proc)
    result = {}
    for name, rs in rounds.items():
        seconds = sum(r["seconds"] for r in rs)
        result[name] = {"goodput": round(sum(r["ok"] for r in rs) / seconds, 1),
                        "round_goodput": [round(r["ok"] / r["seconds"], 1) for r in rs],
                        "rejected_per_s": round(sum(r["rejected"] for r in rs) / seconds, 1),
                        "errors": sum(len(r["errors"]) for r in rs)}
    ratio = result["storm"]["goodput"] / result["polite"]["goodput"] if result["polite"]["goodput"] else 0.0
    print(f"{args.task}, random {args.size}, --max-queue {args.max_queue}, {args.rounds} alternating rounds of "
          f"{args.duration / args.rounds:g} s, {os.cpu_count()} CPUs"
          f"{f' (server on {len(server_cpus)}, client on 1)' if server_cpus else ''}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for name, clients in (("polite", args.polite_clients), ("storm", args.storm_clients)):
        r = result[name]
        print(f"{name:<7} {clients:>4} clients  goodput {r['goodput']:>7} req/s  503s {r['rejected_per_s']:>8}/s  "
              f"errors {r['errors']}  rounds {r['round_goodput']}")
    print(f"storm / polite goodput: {ratio:.2f} (target >= 0.70)")
    return 0 if ratio >= 0.7 else 1


def summarize(rounds: list[dict]) -> dict:
    latencies = sorted(x for r in rounds for x in r["latencies"])
    errors = [e for r in rounds for e in r["errors"]]
    seconds = sum(r["seconds"] for r in rounds)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1) if latencies else float("nan")

    return {"requests": len(latencies), "seconds": round(seconds, 2), "rps": round(len(latencies) / seconds, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "round_rps": [round(len(r["latencies"]) / r["seconds"], 1) for r in rounds],
            "errors": len(errors), "error_examples": sorted(set(errors))[:3]}


def batch_stats(port: int, since: dict | None = None) -> dict:
    """Batches run and requests per batch from the server's metrics (since an earlier reading)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    values = {"sum": 0.0, "count": 0.0}
    for line in data.decode().splitlines():
        for key in values:
            if line.startswith(f"distilkit_batch_requests_{key} "):
                values[key] = float(line.split()[1])
    if since:
        values = {k: v - since["_raw"][k] for k, v in values.items()}
    count = int(values["count"])
    return {"batches": count, "mean_batch": round(values["sum"] / count, 2) if count else None, "_raw": values}


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="text-classification", choices=sorted(HEADS))
    ap.add_argument("--model", default=None, help="checkpoint directory (default: a random one of --size)")
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of measured load per server")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per server, alternating")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load per server first")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the server")
    ap.add_argument("--max-batch-size", type=int, default=64, help="the dynamic run's --max-batch-size")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--storm", action="store_true", help="the retry-storm measurement instead (see above)")
    ap.add_argument("--storm-clients", type=int, default=200)
    ap.add_argument("--polite-clients", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=8, help="the storm server's --max-queue")
    ap.add_argument("--pin-client", action="store_true",
                    help="storm: this client on the last CPU, the server on the others (see above)")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        model = Path(args.model) if args.model else build_checkpoint(workdir, args.task, args.size)
        bodies = request_bodies(args.task)
        if args.storm:
            return storm(args, model, bodies, workdir)
        threads = ["--threads", str(args.threads)] if args.threads else []
        runs = {
            "dynamic": ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
            "batch-1": ["--max-batch-size", "1"],
        }
        # Both servers stay up; measured rounds alternate between them, so that a change in the
        # machine's load (it is shared) affects both sides alike.
        ports, procs = {}, {}
        try:
            for name, flags in runs.items():
                ports[name] = free_port()
                procs[name] = start_server(args.task, model, ports[name], flags + threads, workdir / f"{name}.log")
            for name in runs:  # warm-up: the same load, not recorded (first batches, allocator, caches)
                asyncio.run(measure(ports[name], bodies, args.clients, args.warmup, record=False))
            before = {name: batch_stats(ports[name]) for name in runs}
            rounds: dict[str, list[dict]] = {name: [] for name in runs}
            for _ in range(args.rounds):
                for name in runs:
                    rounds[name].append(asyncio.run(measure(ports[name], bodies, args.clients,
                                                            args.duration / args.rounds)))
            results = {name: {**summarize(rounds[name]), **batch_stats(ports[name], before[name])} for name in runs}
        finally:
            for proc in procs.values():
                stop_server(proc)
        ratio = results["dynamic"]["rps"] / results["batch-1"]["rps"] if results["batch-1"]["rps"] else float("inf")
        summary = {"task": args.task, "model": args.model or f"random {args.size}", "clients": args.clients,
                   "duration_s": args.duration, "rounds": args.rounds, "cpus": os.cpu_count(),
                   "load_average": os.getloadavg(), "runs": results, "speedup": round(ratio, 2)}
        for r in results.values():
            r.pop("_raw", None)
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{args.task}, {summary['model']}, {args.clients} clients, {args.duration:g} s per server in "
                  f"{args.rounds} alternating rounds, {os.cpu_count()} CPUs, load average "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            print(f"{'run':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'batches':>8} {'mean batch':>11}"
                  f"  req/s per round")
            for name, r in results.items():
                print(f"{name:<9} {r['rps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>7} {r['batches']:>8} "
                      f"{r['mean_batch']!s:>11}  {r['round_rps']}")
                for e in r["error_examples"]:
                    print(f"          error: {e}")
            print(f"dynamic / batch-1 throughput: {ratio:.2f}x (target >= 3x, zero errors)")
        ok = ratio >= 3 and all(r["errors"] == 0 for r in results.values())
        return 0 if ok else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
