"""A training run's output directory: one run at a time, and a resume that continues the same run.

`claim(out, d)` holds an exclusive flock on `out/run.lock` for the whole run, taken by rank 0: the
kernel releases it when the holder dies, however it dies, and torchrun workers left running after
their agent was killed keep it, so a second run or a `--resume` beside them is refused.
`start(...)` runs before any work: a fresh run saves its options (`<recipe>_config.json`); a resume
finds its checkpoint and refuses options that differ from the ones the checkpoint was trained with,
unless told to continue with them, and then records the change in `resumes.jsonl` instead of
rewriting the saved config with values the earlier steps never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch.distributed as dist

from ..errors import InputError
from .checkpoints import latest_checkpoint
from .loop import Dist, init_distributed
from .options import Options

LOCK_FILE = "run.lock"
# Options that change what is logged or kept, not what is trained: a resume may change them freely.
HARMLESS = frozenset({"output_dir", "progress", "tensorboard", "plot", "num_threads", "log_every",
                      "keep_checkpoints", "save_every", "shards_dir"})


@contextlib.contextmanager
def claim(out: Path, d: Dist) -> Iterator[None]:
    """Hold `out` for the duration of the block (rank 0 locks; every rank raises if it is taken)."""
    fd = None
    error = None
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            fd = None
            error = (f"output_dir {out} is in use by another training run ({holder}): wait for it to end or stop "
                     f"it (torchrun workers too), or choose another output_dir")
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    error = _share(error, d)
    if error:
        raise InputError(error, "output_dir")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays (unlinking it would let two runs lock two files)


def _share(value: Any, d: Dist) -> Any:
    """Rank 0's value on every rank (so that all of them stop together, with the same message)."""
    if d.world > 1 and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def start(cfg: Options, out: Path, resume: bool | str | os.PathLike, d: Dist, config_name: str,
          allow_changes: bool = False) -> Path | None:
    """Before any work: the checkpoint to resume from (None for a fresh run), after checking that
    it was trained with these options; a fresh run saves its options as `config_name`."""
    options = cfg.to_dict()
    if not resume:
        if d.main:
            (out / config_name).write_text(json.dumps(options, indent=2) + "\n")
        return None
    if resume is True:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise InputError(f"--resume: no checkpoint under {out / 'checkpoints'} to resume from "
                             "(start the run without --resume)", "resume")
    else:
        checkpoint = Path(resume).expanduser()
        if not (checkpoint / "trainer_state.json").is_file():
            raise InputError(f"--resume-from {checkpoint}: not a checkpoint (no trainer_state.json)", "resume")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # Older checkpoints do not carry their options: the run's saved config then stands in for them.
    saved = state.get("options") or read_json(out / config_name) or read_json(checkpoint.parents[1] / config_name)
    if saved is None:
        print(f"warning: {checkpoint} does not record its options: cannot check them against this run's",
              file=sys.stderr)
        return checkpoint
    changed = {k: (saved[k], options[k]) for k in options if k in saved and saved[k] != options[k]}
    refused = {k: v for k, v in changed.items() if k not in HARMLESS}
    if refused and not allow_changes:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise InputError(f"--resume: {checkpoint} was trained with other options ({listed}); resume with the "
                         "interrupted run's options, or pass --allow-changed-options to continue with these",
                         next(iter(refused)))
    if changed and d.main:
        if refused:
            print(f"warning: resuming with changed options from step {state['step']}: "
                  + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items()), file=sys.stderr)
        # The saved config keeps describing the steps it ran; each resume's changes go beside it.
        with (out / "resumes.jsonl").open("a") as f:
            f.write(json.dumps({"step": state["step"], "checkpoint": str(checkpoint),
                                "changed": {k: list(v) for k, v in changed.items()}}) + "\n")
    if d.main and not (out / config_name).exists():
        (out / config_name).write_text(json.dumps(saved, indent=2) + "\n")
    return checkpoint


def run_recipe(cfg: Options, resume: bool | str | os.PathLike, allow_changes: bool, config_name: str,
               body: Callable[..., Any]) -> Any:
    """body(cfg, out, d, checkpoint or False, allow_changes) inside `claim`, after `start`."""
    d = init_distributed()
    out = Path(cfg.output_dir).expanduser()
    with claim(out, d):  # one run at a time in output_dir, for the whole run
        checkpoint = start(cfg, out, resume, d, config_name, allow_changes)
        return body(cfg, out, d, checkpoint or False, allow_changes)


def read_json(path: Path) -> Any:
    """A JSON file's value, or None when it is absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
