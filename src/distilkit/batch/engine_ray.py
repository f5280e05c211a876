"""The Ray engine: chunks are found on the driver (a pass that reads but does not decode), scored
by a Ray Data actor pool (one model load per actor) that reads each chunk from its address, and
committed by the driver as they come back, in any order.

Ray is kept quiet: its own progress bars and log lines are off, and its native (C++) logging is
at error level; our progress display reports the job. A local instance that we start is stopped
when the job ends, and a watchdog process stops it too if the driver dies without that (SIGKILL).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from .engine_local import Tally
from .job import BatchError
from .parts import Chunk, chunk_segments, commit, iter_chunks, read_segments
from .scorer import Columns, build_scorer

# Lines Ray writes to the driver's stderr itself: its C++ core worker ("[2026-12-02 05:19:15,527 E
# 22486 22486] core_worker.cc:2465: ...", at error level for notices a user cannot act on) and
# Python log records. Setting RAY_BACKEND_LOG_LEVEL only adds a line saying it was set.
RAY_LINE = re.compile(r"^(\[\d{4}-\d\d-\d\d [\d:,.]+ [DIWEF] \d+ \d+\] |\d{4}-\d\d-\d\d [\d:,.]+\s+(DEBUG|INFO|WARNING|ERROR)\s)")


class _RayScorer:
    """A Ray Data actor: loads the model once, then scores chunks it reads from their addresses."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.scorer = build_scorer(spec)
        self.columns = Columns(**spec["columns"]).needed(self.scorer.task.name)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        texts = []
        for index, first, segments in zip(batch["chunk"], batch["first"], batch["segments"]):
            entries = read_segments(self.scorer.sources, json.loads(segments), self.columns)
            texts.append(self.scorer.score(Chunk(int(index), int(first), entries))[1])
        return {"chunk": np.asarray(batch["chunk"]), "part": np.asarray(texts, dtype=object)}


def run_ray(spec: dict, sources, work: Path, done: dict, tally: Tally, address: str | None,
            actors: int | None, cpus: float, gpus: float) -> tuple[int, int]:
    try:
        import ray
        import ray.data
    except ImportError:
        raise BatchError("--engine ray needs Ray Data: pip install 'distilkit[ray]'") from None
    columns = Columns(**spec["columns"]).needed(spec["task"])
    pending, n_chunks, n_records = [], 0, 0
    for chunk in iter_chunks(sources, spec["chunk_size"], columns):
        n_chunks, n_records = chunk.index + 1, chunk.first + len(chunk.entries)
        if chunk.index not in done:
            pending.append({"chunk": chunk.index, "first": chunk.first, "segments": json.dumps(chunk_segments(chunk))})
    tally.show.set_total(n_records)
    if not pending:
        return n_chunks, n_records
    started = not ray.is_initialized()
    watchdog = None
    loggers = {name: logging.getLogger(name) for name in ("ray", "ray.data")}
    levels = {name: log.level for name, log in loggers.items()}
    for log in loggers.values():
        log.setLevel(logging.ERROR)  # our own progress replaces Ray Data's bars and their warnings
    address = address or os.environ.get("RAY_ADDRESS")
    diverted = _divert_ray_lines(work / "ray.log")
    diverted.__enter__()
    try:
        if started:
            tally.show.write(f"batch: starting Ray{' at ' + address if address else ' on this machine'} "
                             f"(Ray's own log lines go to {work / 'ray.log'})")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ray.init(address=address, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
            if not address:
                watchdog = _start_watchdog()
        tally.show.restart_clock()  # records/s counts scoring, not starting Ray
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = False
        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cpus, 1e-9)))
        actors = max(1, min(actors, len(pending)))
        actor_spec = dict(spec, threads=spec["threads"] or max(1, math.floor(cpus)))
        # One chunk per block, so each chunk comes back (and is committed) as soon as it is scored.
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        ds = ds.map_batches(_RayScorer, batch_size=1, fn_constructor_kwargs={"spec": actor_spec},
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
                            num_gpus=gpus or None)
        for row in ds.iter_rows():
            text = row["part"]
            commit(work, int(row["chunk"]), text)
            tally.committed(json.loads(text[: text.index("\n")]), None)
    finally:
        for name, log in loggers.items():
            log.setLevel(levels[name])
        if started and ray.is_initialized():
            ray.shutdown()
        if watchdog is not None:
            watchdog.terminate()
            watchdog.wait()
        diverted.__exit__(None, None, None)
    return n_chunks, n_records


@contextmanager
def _divert_ray_lines(log: Path):
    """Point fd 2 at a pipe for the Ray run: Ray's own lines (`RAY_LINE`) go to `log`, everything
    else (our progress) on to the real stderr. Ray's C++ code writes to fd 2 directly, so
    Python-level redirection cannot catch it."""
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump():
        with open(read, "rb", buffering=0) as pipe, open(log, "ab") as sink:
            for line in iter(pipe.readline, b""):
                try:
                    if RAY_LINE.match(line.decode("utf-8", "replace")):
                        sink.write(line)
                        sink.flush()
                    else:
                        os.write(real, line)
                except OSError:
                    pass  # never block the writers: a lost line beats a hung job

    thread = threading.Thread(target=pump, name="ray-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last writer: the pump ends
        thread.join(timeout=5)
        os.close(real)


def _start_watchdog() -> subprocess.Popen | None:
    """A small process, in its own session so a kill of ours does not reach it, that stops the
    local Ray instance's processes once this driver is gone."""
    import ray

    node = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(getattr(node, "_global_node", None), "get_session_dir_path", None)
    session = node() if node else None
    if not session:
        return None
    return subprocess.Popen([sys.executable, "-m", "distilkit.batch.engine_ray", str(os.getpid()), session],
                            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process we can see."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
    return out


def _descendants(root: int) -> set[int]:
    parents = _parents()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _watch(driver: int, session: str) -> None:
    """While the driver lives, note its descendants (Ray's gcs, raylet, agents, workers: once the
    driver is gone they are re-parented and the tree is lost); then stop them, and anything else
    whose command line names the session's folder."""
    family: set[int] = set()
    while True:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        family = (family | _descendants(driver)) - {os.getpid()}
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = family & set(_parents())
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if session.encode() in (entry / "cmdline").read_bytes():
                        alive.add(int(entry.name))
                except OSError:
                    continue
        for pid in alive:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        if alive and sig == signal.SIGTERM:
            time.sleep(2.0)  # a chance to exit cleanly before SIGKILL


if __name__ == "__main__":  # the watchdog: python -m distilkit.batch.engine_ray DRIVER_PID SESSION_DIR
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the driver ended normally and stopped Ray itself
    _watch(int(sys.argv[1]), sys.argv[2])
