"""Job state: the fingerprint that says which job an output belongs to, the lock, and resume.

`<output>.batch/` holds `manifest.json` (the job's fingerprint and status), the committed part files
(see `parts`) and `lock`. `open_job` decides whether a run starts, resumes or finds the job
complete, and refuses to mix two jobs in one output, naming what differs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .sinks import atomic_write

MANIFEST_VERSION = 2  # 2: part headers list their ids (duplicate ids are counted at the join)


class BatchError(Exception):
    """The job cannot start or go on: a changed input under the same output, a locked output, ..."""


def work_dir(output: Path) -> Path:
    """Where a job keeps its manifest and part files: `<output>.batch/` beside the output."""
    return output.with_name(output.name + ".batch")


def fingerprint(path: Path, window: int = 1 << 20) -> dict[str, Any]:
    """Size and a SHA-256 of the first and last MiB: cheap on a 10 GB file, and it changes when a file
    is appended to, truncated, replaced or rewritten (an edit of the same length mid-file is missed)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(window))
        if size > window:
            f.seek(max(window, size - window))
            h.update(f.read(window))
    return {"size": size, "sha256_head_tail": h.hexdigest()}


def model_fingerprint(path: Path) -> dict[str, Any]:
    """Config, tokenizer and weight files by content (size + head/tail hash), not by location."""
    keep = (".json", ".txt", ".safetensors", ".bin", ".model")
    return {f.name: fingerprint(f) for f in sorted(path.iterdir()) if f.is_file() and f.suffix in keep}


class Lock:
    """An exclusive flock on `<work>/lock`: two jobs never write one output. The kernel drops it
    when the process dies, SIGKILL included."""

    def __init__(self, work: Path, output: Path):
        self.path, self.output = work / "lock", output

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise BatchError(f"another batch job is writing {self.output}") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, ensure_ascii=False)))


def reset(work: Path, *files: Path) -> None:
    for entry in work.iterdir():
        if entry.name != "lock":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for f in files:
        f.unlink(missing_ok=True)


def open_job(work: Path, job: dict, output: Path, errors_path: Path, overwrite: bool,
             say: Callable[[str], None]) -> str:
    """'new', 'resume' or 'complete'; raises BatchError when the output belongs to another job."""
    for stale in [*work.glob(".*.tmp-*"), *output.parent.glob(f".{output.name}.tmp-*"),
                  *errors_path.parent.glob(f".{errors_path.name}.tmp-*")]:
        stale.unlink(missing_ok=True)  # files a killed run was writing; we hold the lock
    manifest_path = work / "manifest.json"
    if overwrite:
        reset(work, output, errors_path)
    elif manifest_path.exists():
        manifest = read_json(manifest_path)
        if manifest.get("version") != MANIFEST_VERSION:
            raise BatchError(f"{output} was started by another distilkit version (manifest version "
                             f"{manifest.get('version')}, this one writes {MANIFEST_VERSION}); pass --overwrite "
                             f"to start over, or finish it with the distilkit that started it")
        changed = differences(manifest.get("job", {}), job)
        if changed:
            raise BatchError(f"{output} belongs to a different job ({'; '.join(changed)}). Pass --overwrite to "
                             f"start over (its results are deleted), or choose another output.")
        if manifest.get("status") == "complete":
            if output.exists():
                return "complete"
            say(f"{output} was complete but is gone: scoring again")
            reset(work, errors_path)
        else:
            return "resume"
    elif output.exists():
        raise BatchError(f"{output} exists and no batch job manifest ({manifest_path}) says what made it; "
                         f"pass --overwrite to replace it")
    elif any(work.glob("part-*.jsonl")):
        reset(work)
    write_json(manifest_path, {"version": MANIFEST_VERSION, "status": "running", "job": job})
    return "new"


def differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("task") != new["task"]:
        out.append(f"task {old.get('task')} -> {new['task']}")
    if old.get("inputs") != new["inputs"]:
        before = {i["path"]: i for i in old.get("inputs", [])}
        after = {i["path"]: i for i in new["inputs"]}
        out.append("input " + (", ".join(_changed(before, after)) or "order changed"))
    if old.get("model") != new["model"]:
        out.append(f"model files changed ({', '.join(_changed(old.get('model', {}), new['model']))})")
    for key in ("params", "columns", "chunk_size", "mode"):
        if old.get(key) != new[key]:
            out.append(f"{key.replace('_', ' ')} {json.dumps(old.get(key))} -> {json.dumps(new[key])}")
    return out


def _changed(before: dict, after: dict) -> list[str]:
    """`name removed` / `name added` / `name changed` for each entry that differs."""
    return ([f"{k} removed" for k in before if k not in after] + [f"{k} added" for k in after if k not in before]
            + [f"{k} changed" for k in after if k in before and before[k] != after[k]])
