"""Every figure of the README in one run: each benchmark in its own process, one after another
(never two at once: they would share the 2 cores), with the arguments the README quotes.

    python benchmarks/run.py [--only pipelines,pipelines-bf16,speed,agreement,...] [--quick]

--quick: fewer examples and rounds (minutes instead of tens of minutes; noisier figures).
Each benchmark prints its own table and ratios; a failing one is reported and the rest still run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#           name          script                  full arguments                          --quick arguments  [environment]
BENCHMARKS = [
    ("pipelines", "pipelines.py", ["--n", "256", "--rounds", "3"], ["--n", "64", "--rounds", "2"]),
    ("pipelines-bf16", "pipelines.py", ["--n", "256", "--rounds", "3", "--mode", "bf16"],
     ["--n", "64", "--rounds", "2", "--mode", "bf16"]),
    ("pipelines-int8", "pipelines.py", ["--n", "256", "--rounds", "3", "--mode", "int8"],
     ["--n", "64", "--rounds", "2", "--mode", "int8"]),
    ("pipelines-int8-fbgemm", "pipelines.py", ["--n", "256", "--rounds", "3", "--mode", "int8"],
     ["--n", "64", "--rounds", "2", "--mode", "int8"], {"DISTILKIT_INT8_ENGINE": "fbgemm"}),
    ("pipelines-bf16-malloc-default", "pipelines.py", ["--n", "256", "--rounds", "3", "--mode", "bf16", "--task", "qa"],
     ["--n", "64", "--rounds", "2", "--mode", "bf16", "--task", "qa"], {"DISTILKIT_RETAIN_MEMORY": "0"}),
    ("pipelines-onnx-int8", "pipelines.py", ["--n", "256", "--rounds", "3", "--mode", "onnx-int8", "--task", "qa"],
     ["--n", "64", "--rounds", "2", "--mode", "onnx-int8", "--task", "qa"]),
    ("latency", "latency.py", ["--n", "48"], ["--n", "16", "--warm", "32"]),
    ("latency-no-length-buckets", "latency.py", ["--n", "48", "--modes", "fp32,bf16,int8"],
     ["--n", "16", "--warm", "32", "--modes", "fp32,bf16,int8"], {"DISTILKIT_LENGTH_BUCKETS": "0"}),
    ("token-budget", "token_budget.py", ["--rounds", "5"], ["--n", "64", "--rounds", "2", "--budgets", "1024,2048"]),
    ("speed", "speed.py", ["--batch", "8", "--tokens", "128", "--rounds", "5"], ["--rounds", "2"]),
    ("speed-384", "speed.py", ["--batch", "8", "--tokens", "384", "--rounds", "5", "--skip-cold", "--fp32-study"],
     ["--tokens", "384", "--rounds", "2", "--skip-cold", "--fp32-study"]),
    ("speed-malloc-default", "speed.py", ["--batch", "8", "--tokens", "128", "--rounds", "5", "--skip-cold"],
     ["--rounds", "2", "--skip-cold"], {"DISTILKIT_RETAIN_MEMORY": "0"}),
    ("speed-int8-fbgemm", "speed.py", ["--batch", "8", "--tokens", "128", "--rounds", "5", "--skip-cold"],
     ["--rounds", "2", "--skip-cold"], {"DISTILKIT_INT8_ENGINE": "fbgemm"}),
    ("compile", "speed.py", ["--batch", "8", "--tokens", "128", "--rounds", "5", "--skip-cold", "--compile"],
     ["--rounds", "2", "--skip-cold", "--compile"]),
    ("cpu-variants", "cpu_variants.py", ["--rounds", "5", "--n", "128"], ["--rounds", "2", "--n", "32"]),
    ("agreement", "agreement.py", [], ["--limit", "200"]),
    ("agreement-int8-fbgemm", "agreement.py", ["--modes", "fp32,int8"], ["--modes", "fp32,int8", "--limit", "200"],
     {"DISTILKIT_INT8_ENGINE": "fbgemm"}),
    ("serve", "serve_load.py", ["--task", "text-classification", "--clients", "32", "--duration", "15"],
     ["--task", "text-classification", "--duration", "5", "--rounds", "1"]),
    ("batch", "batch_qa.py", ["--limit", "5000"], ["--limit", "200"]),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(b[0] for b in BENCHMARKS))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    wanted = args.only.split(",")
    unknown = set(wanted) - {b[0] for b in BENCHMARKS}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    failed = []
    for name, script, full, quick, *env in BENCHMARKS:
        if name not in wanted:
            continue
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        env = env[0] if env else {}
        shown = " ".join([*(f"{k}={v}" for k, v in env.items()), *cmd[1:]])
        print(f"\n=== {name}: {shown}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call(cmd, env={**os.environ, **env})
        print(f"=== {name}: exit {rc} after {time.perf_counter() - started:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed or missed their targets: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
