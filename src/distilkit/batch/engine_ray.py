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
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from .engine_local import Tally
from .job import BatchError
from .parts import Chunk, chunk_segments, commit, iter_chunks, read_segments
from .scorer import Columns, build_scorer

# Ray's native components log to stderr at info/warning level unless told otherwise (the
# token-auth notice and core_worker lines a user cannot act on); they read these at start.
QUIET_ENV = {"RAY_BACKEND_LOG_LEVEL": "error", "RAY_LOG_TO_STDERR": "0", "RAY_DEDUP_LOGS": "1"}


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
    try:
        if started:
            for key, value in QUIET_ENV.items():
                os.environ.setdefault(key, value)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
            if not (address or os.environ.get("RAY_ADDRESS")):
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
    return n_chunks, n_records


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


def _session_processes(session: str) -> list[int]:
    """Processes whose command line names the Ray session's folder: the instance we started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if session.encode() in cmdline and b"distilkit.batch.engine_ray" not in cmdline:
                pids.append(int(entry.name))
    return pids


def _watch(driver: int, session: str) -> None:
    while True:
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_processes(session):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(2.0)


if __name__ == "__main__":  # the watchdog: python -m distilkit.batch.engine_ray DRIVER_PID SESSION_DIR
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the driver ended normally and stopped Ray itself
    _watch(int(sys.argv[1]), sys.argv[2])
