"""Where a fill-mask process's memory goes as batch shapes vary: RSS over many `task.run` calls.

Each arm runs in its own process with its environment variables (default: the defaults, and
oneDNN's kernel cache off), both at once, on a tiny random fill-mask model with the real
tokenizer: batches of 1-32 emotion sentences with one word masked, drawn at random, so that
nearly every batch has a new shape (more shapes than a server's batches have). RSS is printed
every 500 batches; the growth across arms says what each cache holds.

    python benchmarks/fill_mask_memory.py [--batches 1500] [--arm-env "NAME:VAR=VALUE,..."]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import build_checkpoint, request_bodies  # noqa: E402

ARMS = {"defaults": {}, "oneDNN cache off": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(model: str, batches: int) -> None:
    import torch

    from distilkit import pipeline

    torch.set_num_threads(1)
    task = pipeline("fill-mask", model=model)
    texts = [json.loads(b)["inputs"]["input_string"][0] for b in request_bodies("fill-mask", 64)]
    rng = random.Random(0)
    samples = {}
    for i in range(batches + 1):
        if i % 500 == 0:
            samples[i] = round(rss_mb(), 1)
        task.run(rng.sample(texts, rng.randint(1, 32)), top_k=5)
    print(json.dumps(samples))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=1500)
    ap.add_argument("--arm-env", action="append", default=[], metavar="NAME:VAR=VALUE,...")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "BATCHES"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return 0
    arms = dict(ARMS)
    for spec in args.arm_env:
        name, _, pairs = spec.partition(":")
        arms[name] = dict(p.split("=", 1) for p in pairs.split(","))
    model = build_checkpoint(Path(tempfile.mkdtemp(prefix="fm-memory-")), "fill-mask", "tiny")
    procs = {name: subprocess.Popen([sys.executable, __file__, "--worker", str(model), str(args.batches)],
                                    env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
             for name, env in arms.items()}
    print(f"RSS (MB) after N random fill-mask batches, {os.cpu_count()} CPUs, arms side by side")
    for name, proc in procs.items():
        out, _ = proc.communicate()
        samples = json.loads(out.strip().splitlines()[-1])
        print(f"{name:<20} " + "  ".join(f"{n}: {mb}" for n, mb in samples.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
