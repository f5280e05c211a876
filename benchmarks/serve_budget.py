"""What the serve compute budget allows at most, and what it costs.

1. In process, for each task and model size: the largest requests the default budget admits
   (`ServeConfig` defaults checked with the server's own `check_budget`), timed through
   `task.run` (median of --rounds). The budget is meant to keep each under about a second with
   DistilBERT-base on 2 CPU cores.
2. Over HTTP on 127.0.0.1 (tiny fill-mask model): `GET /health` latency, polled every 5 ms,
   while the largest answer the budget allows is computed and rendered.

    python benchmarks/serve_budget.py [--sizes tiny,base] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import _one, build_checkpoint, free_port, start_server, stop_server  # noqa: E402

from distilkit.serve.admission import ApiError, check_budget  # noqa: E402
from distilkit.serve.app import ServeConfig  # noqa: E402

PROSE = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
         "a region in France. They were descended from Norse raiders and pirates from Denmark. ")


def worst_cases(task: str, mask: str) -> dict[str, tuple[list, dict]]:
    if task == "fill-mask":
        sentence = (PROSE * 3)[:1000]
        return {"2 masks x top_k 1000, ~250-token sentence": ([f"{mask} {sentence} {mask}."], {"top_k": 1000}),
                "16 inputs x 128 tokens, top_k 5": ([f"{PROSE[:380]} {mask}."] * 16, {"top_k": 5})}
    if task == "question-answering":
        return {"one ~2,000-token context (windows)": ([{"question": "Who gave their name to Normandy?",
                                                       "context": (PROSE * 40)[:5600]}], {}),
                "16 SQuAD-sized pairs": ([{"question": "Who were the Normans?", "context": PROSE * 2}] * 16, {})}
    return {"4 texts of ~500 tokens": ([PROSE * 8] * 4, {"truncation": True})}


def in_process(sizes: list[str], rounds: int, workdir: Path) -> None:
    from distilkit.pipelines import pipeline

    budget = ServeConfig()
    for size in sizes:
        for task in ("fill-mask", "question-answering", "text-classification"):
            t = pipeline(task, model=str(build_checkpoint(workdir, task, size)))
            for name, (inputs, params) in worst_cases(task, t.tokenizer.mask_token).items():
                cost = t.cost(inputs, t.params(**params))
                try:
                    check_budget(cost, budget.max_request_tokens, budget.max_response_items, budget.max_response_bytes)
                    admitted = "admitted"
                except ApiError as e:
                    admitted = f"refused ({e.message[:60]})"
                t.run(inputs, **params)  # warm
                times = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    t.run(inputs, **params)
                    times.append(time.perf_counter() - t0)
                print(f"{size:<5} {task:<20} {name:<42} tokens~{cost.tokens:>5} items {cost.items:>5} "
                      f"bytes~{cost.response_bytes:>8}  {admitted:<9} median {statistics.median(times) * 1000:8.1f} ms")


def health_during_render(workdir: Path) -> None:
    model = build_checkpoint(workdir, "fill-mask", "tiny")
    port = free_port()
    proc = start_server("fill-mask", model, port, ["--threads", "1"], workdir / "health.log")
    try:
        sentence = (PROSE * 3)[:1000]
        body = ('{"inputs": "[MASK] %s [MASK].", "parameters": {"top_k": 1000}}' % sentence).encode()
        latencies: list[float] = []
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    while s.recv(4096):
                        pass
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.005)

        async def big() -> tuple[int, int, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.perf_counter()
            status, payload = await _one(reader, writer, port, body)
            writer.close()
            return status, len(payload), time.perf_counter() - t0

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.2)
        status, size, seconds = asyncio.run(big())
        done.set()
        poller.join()
        latencies.sort()
        print(f"fill-mask tiny: the largest admitted answer ({status}, {size / 1e6:.2f} MB, {seconds * 1000:.0f} ms); "
              f"/health during it: {len(latencies)} polls, median {statistics.median(latencies) * 1000:.1f} ms, "
              f"max {latencies[-1] * 1000:.1f} ms")
    finally:
        stop_server(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="tiny,base")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="serve-budget-"))
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    in_process(args.sizes.split(","), args.rounds, workdir)
    health_during_render(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
