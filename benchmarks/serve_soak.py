"""Soak test of `distilkit serve`: steady load for minutes, server RSS sampled every 10 s.

Starts, on 127.0.0.1 ports, a question-answering and a fill-mask server for each allocator arm
(the server as it is; `--arm-env` adds arms with other environment variables, e.g. malloc or
oneDNN settings) and drives
every server with N keep-alive clients for the whole run, all at once, so that a change in the
shared machine's load touches every arm alike. Each client cycles through 64 distinct bodies
(SQuAD dev questions, emotion sentences with one word masked). Every `--sample-s` seconds it
records each server's resident set size (/proc/PID/status VmRSS) and requests answered.

    python benchmarks/serve_soak.py [--duration 600] [--clients 32] [--size tiny]
        [--out docs/serve_soak.json] [--png docs/serve_soak.png]

The verdict per server: after the first minute, RSS stays within 5% of its value at one minute
(max and last sample reported). Exits with 1 when a server of the default arm misses it.
Only loopback addresses are used; every loop stops at --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import _one, build_checkpoint, free_port, request_bodies, start_server, stop_server  # noqa: E402

# Arms: environment variables per server. A run of the default arm only, unless --arm-env adds
# more (e.g. "2 arenas:MALLOC_ARENA_MAX=2", "oneDNN cache 256:ONEDNN_PRIMITIVE_CACHE_CAPACITY=256").
ARMS: dict[str, dict[str, str]] = {"default": {}}
TASKS = ("question-answering", "fill-mask")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive(port: int, bodies: list[bytes], stop_at: float, counts: dict, key: str) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = hash(key) % len(bodies)
    try:
        while loop.time() < stop_at:
            i += 1
            try:
                status, _ = await asyncio.wait_for(_one(reader, writer, port, bodies[i % len(bodies)]), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                counts[key + ":errors"] = counts.get(key + ":errors", 0) + 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            k = key + (":ok" if status == 200 else ":errors")
            counts[k] = counts.get(k, 0) + 1
    finally:
        writer.close()


async def soak(servers: dict, bodies: dict, clients: int, duration: float, sample_s: float) -> list[dict]:
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    counts: dict[str, int] = {}
    tasks = [asyncio.create_task(drive(s["port"], bodies[s["task"]], stop_at, counts, name))
             for name, s in servers.items() for _ in range(clients)]
    samples, t0 = [], loop.time()
    while True:
        samples.append({"t": round(loop.time() - t0, 1),
                        **{name: {"rss_mb": round(rss_mb(s["proc"].pid), 1), "ok": counts.get(name + ":ok", 0),
                                  "errors": counts.get(name + ":errors", 0)} for name, s in servers.items()}})
        if loop.time() >= stop_at:
            break
        await asyncio.sleep(min(sample_s, max(0.0, stop_at - loop.time())))
    await asyncio.gather(*tasks)
    return samples


def verdict(samples: list[dict], name: str) -> dict:
    at_minute = next(s for s in samples if s["t"] >= 60)[name]["rss_mb"] if samples[-1]["t"] >= 60 else None
    series = [s[name]["rss_mb"] for s in samples if s["t"] >= 60]
    last = samples[-1][name]
    out = {"rss_start_mb": samples[0][name]["rss_mb"], "rss_at_60s_mb": at_minute, "rss_max_after_60s_mb": max(series, default=None),
           "rss_last_mb": last["rss_mb"], "requests": last["ok"], "errors": last["errors"],
           "req_per_s": round(last["ok"] / samples[-1]["t"], 1) if samples[-1]["t"] else None}
    if at_minute:
        out["growth_after_60s_pct"] = round(100 * (max(series) - at_minute) / at_minute, 2)
        out["flat_within_5pct"] = out["growth_after_60s_pct"] <= 5.0
    return out


def plot(runs: list[tuple[str, list[dict]]], path: Path, title: str) -> None:
    """runs: (label prefix, samples) of one or more soaks, every server's RSS curve on its task's panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(12, 4.5), sharey=False)
    for ax, task in zip(axes, TASKS):
        for prefix, samples in runs:
            for name in samples[0]:
                if name.startswith(task):
                    ax.plot([s["t"] / 60 for s in samples], [s[name]["rss_mb"] for s in samples], marker=".",
                            ms=3, label=(prefix + name.split(" | ", 1)[1]).strip())
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(task)
        ax.set_xlabel("minutes under load")
        ax.set_ylabel("server RSS (MB)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--clients", type=int, default=32, help="clients per server")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per server")
    ap.add_argument("--arm-env", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                    help="one more arm: its name and environment variables")
    ap.add_argument("--out", default=None, help="write the samples and verdicts as JSON here")
    ap.add_argument("--png", default=None, help="plot RSS over time here (matplotlib)")
    ap.add_argument("--replot", nargs="+", default=None, metavar="LABEL=JSON",
                    help="no soak: plot earlier --out files together into --png")
    args = ap.parse_args(argv)
    if args.replot:
        runs = []
        for spec in args.replot:
            label, _, file = spec.rpartition("=")
            runs.append((f"{label}: " if label else "", json.loads(Path(file).read_text())["samples"]))
        plot(runs, Path(args.png), "server RSS under steady load, one curve per server and arm "
             "(32 keep-alive clients each, tiny model, 2 shared CPUs)")
        return 0

    arms = dict(ARMS)
    for spec in args.arm_env:
        arm, _, assignments = spec.partition(":")
        arms[arm] = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
    workdir = Path(tempfile.mkdtemp(prefix="serve-soak-"))
    servers: dict[str, dict] = {}
    try:
        models = {t: build_checkpoint(workdir, t, args.size) for t in TASKS}
        bodies = {t: request_bodies(t, 64) for t in TASKS}
        for arm, env in arms.items():
            for task in TASKS:
                name, port = f"{task} | {arm}", free_port()
                old = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    proc = start_server(task, models[task], port, ["--threads", str(args.threads)],
                                        workdir / f"{task}-{len(servers)}.log")
                finally:
                    for k, v in old.items():
                        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
                servers[name] = {"task": task, "port": port, "proc": proc}
        t0 = time.time()
        samples = asyncio.run(soak(servers, bodies, args.clients, args.duration, args.sample_s))
        names = list(servers)
        result = {"duration_s": args.duration, "clients_per_server": args.clients, "size": args.size,
                  "threads": args.threads, "cpus": os.cpu_count(), "load_average_end": os.getloadavg(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                  "verdicts": {n: verdict(samples, n) for n in names}, "samples": samples}
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        if args.png:
            plot([("", samples)], Path(args.png),
                 f"{args.clients} clients per server, {args.size} model, {args.duration / 60:g} min, "
                 f"{os.cpu_count()} shared CPUs (load average at the end {os.getloadavg()[0]:.1f})")
        for n, v in result["verdicts"].items():
            print(f"{n:<45} {json.dumps(v)}")
        default_ok = all(v.get("flat_within_5pct", False) for n, v in result["verdicts"].items() if n.endswith("| default"))
        return 0 if default_ok else 1
    finally:
        for s in servers.values():
            stop_server(s["proc"])
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
