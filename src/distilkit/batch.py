"""`distilkit batch`: score record files (JSONL, CSV, Parquet) with one task, resumably.

The input streams through in chunks of `chunk_size` records. Each chunk goes through the task's own
featurize -> forward -> decode loop (length-sorted, token-budget batches) and is committed as one
part file, written aside and renamed into place, in `<output>.batch/`. A killed job loses at most
the chunks in flight; a rerun skips the committed ones. Once every chunk is in, the parts are
joined in input order into the output file. Engines: `local` (reading and tokenizing, the model,
and decoding and writing run in three overlapping threads) and `ray` (Ray Data `map_batches`, one
model per actor). `run_batch`'s signature is the CLI: `main` builds its flags from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Sequence

from . import io as rio
from .config import Mode
from .errors import InputError

MANIFEST_VERSION = 1
DEFAULT_CHUNK = 2048
DEFAULT_CHUNK_FILL_MASK = 256  # its outputs are (masks, vocab) floats per record: ~120 KB each


class BatchError(Exception):
    """The job cannot start or go on: a changed input under the same output, a locked output, ..."""


@dataclass(frozen=True)
class Columns:
    """Which input field feeds which part of the task's input."""

    text: str = "text"
    text_pair: str | None = None
    question: str = "question"
    context: str = "context"
    id: str | None = None  # None: the record's "id" if it has one, else its position

    def for_task(self, task: str) -> dict[str, str]:
        """Task input key -> column, for the fields this task reads."""
        if task == "question-answering":
            return {"question": self.question, "context": self.context}
        if task == "text-classification" and self.text_pair:
            return {"text": self.text, "text_pair": self.text_pair}
        return {"text": self.text}

    def needed(self, task: str) -> list[str]:
        return [*self.for_task(task).values(), self.id or "id"]


@dataclass
class BatchReport:
    output: Path
    errors_path: Path
    records: int  # scored records in the output
    errors: int  # records in the errors file
    chunks: int
    chunks_resumed: int  # chunks a previous run had committed
    seconds: float
    complete: bool = True


TaskName = Literal["question-answering", "fill-mask", "text-classification", "token-classification",
                   "qa", "ner", "sentiment-analysis"]


def run_batch(
    input: Annotated[str | list[str], "input files or globs (JSONL, CSV, TSV, Parquet; .gz for text), "
                                      "read in the order given, each glob's matches sorted"],
    output: Annotated[str, "output file: .jsonl, .csv or .parquet; one {id, result} record per input record"],
    task: Annotated[TaskName, "the task"],
    model: Annotated[str | None, "local directory or hub id (default: the task's seed checkpoint, "
                                 "or $DISTILKIT_MODEL)"] = None,
    params: Annotated[dict | None, "task parameters as a JSON object, e.g. '{\"top_k\": 2}'"] = None,
    text_column: Annotated[str, "field holding the text (fill-mask, text- and token-classification)"] = "text",
    text_pair_column: Annotated[str | None, "field holding the second text of a pair (text-classification)"] = None,
    question_column: Annotated[str, "field holding the question (question-answering)"] = "question",
    context_column: Annotated[str, "field holding the context (question-answering)"] = "context",
    id_column: Annotated[str | None, "field holding the record id (default: `id` when present, else the "
                                     "record's 0-based position across all inputs)"] = None,
    input_format: Annotated[Literal["auto", "jsonl", "csv", "tsv", "parquet"],
                            "input format (default: from each file's extension)"] = "auto",
    errors: Annotated[str | None, "errors file, JSONL: {id, error, field, source} per bad record "
                                  "(default: <output stem>.errors.jsonl)"] = None,
    overwrite: Annotated[bool, "start over when the output belongs to another job (changed input, "
                               "model, task or parameters)"] = False,
    chunk_size: Annotated[int | None, "records per chunk: the unit of sorting, memory and resume "
                                      f"(default {DEFAULT_CHUNK}; {DEFAULT_CHUNK_FILL_MASK} for fill-mask)"] = None,
    max_tokens: Annotated[int | None,
                          "padded tokens per forward pass (default: 1024 on CPU, 2048 in bf16, 16384 on GPU)"] = None,
    mode: Annotated[Mode, "run mode"] = "fp32",
    device: Annotated[str | None, "torch device (default: cuda when available, else cpu)"] = None,
    threads: Annotated[int | None, "torch CPU threads (per actor under Ray)"] = None,
    engine: Annotated[Literal["local", "ray"], "local threads, or Ray Data (pip install 'distilkit[ray]')"] = "local",
    ray_address: Annotated[str | None, "Ray cluster address (default: $RAY_ADDRESS, else a local instance)"] = None,
    ray_actors: Annotated[int | None, "scoring actors (default: the cluster's CPUs / --ray-cpus-per-actor)"] = None,
    ray_cpus_per_actor: Annotated[float, "CPUs reserved per actor"] = 1.0,
    ray_gpus_per_actor: Annotated[float, "GPUs reserved per actor"] = 0.0,
    progress: Annotated[Literal["auto", "bar", "lines", "none"],
                        "progress display (auto: a bar on a terminal, else plain lines)"] = "auto",
    progress_interval: Annotated[float, "seconds between plain progress lines"] = 30.0,
) -> BatchReport:
    """Score every record of `input` with `task` into `output`, resuming a killed run of the same job."""
    from .pipelines import task_class

    started = time.perf_counter()
    cls = task_class(task)
    task_name = cls.name
    output_path = Path(output)
    out_fmt = rio.output_format(output_path)
    errors_path = Path(errors) if errors else output_path.with_name(_stem(output_path) + ".errors.jsonl")
    if errors_path.resolve() == output_path.resolve():
        raise BatchError("the errors file and the output are the same file")
    chunk_size = chunk_size or (DEFAULT_CHUNK_FILL_MASK if task_name == "fill-mask" else DEFAULT_CHUNK)
    if chunk_size < 1:
        raise BatchError(f"chunk_size must be at least 1, got {chunk_size}")
    if out_fmt == "parquet" or input_format == "parquet":
        rio.require_pyarrow()
    work = work_dir(output_path)
    sources = rio.expand_inputs(input, input_format, exclude=[output_path, errors_path, work])
    if any(s.format == "parquet" for s in sources):
        rio.require_pyarrow()
    columns = Columns(text_column, text_pair_column, question_column, context_column, id_column)

    params = dict(params or {})
    if task_name == "text-classification" and "top_k" in params:
        params["legacy"] = False  # top_k given: a sorted list per input, as the pipeline does
    from .tasks.base import build_params

    build_params(cls.Params, params, task_name)  # InputError before anything is loaded

    model_ref = str(model or os.environ.get("DISTILKIT_MODEL") or _default_model(task_name))
    from .hub import resolve

    model_path = resolve(model_ref)
    job = {
        "task": task_name,
        "inputs": [{"path": str(s.path.resolve()), "format": s.format, "gzip": s.gzipped, **rio.fingerprint(s.path)}
                   for s in sources],
        "model": _model_fingerprint(model_path),
        "params": params,
        "columns": dataclasses.asdict(columns),
        "chunk_size": chunk_size,
        "mode": mode,
    }
    show = Progress(progress, progress_interval)
    work.mkdir(parents=True, exist_ok=True)
    with _lock(work, output_path):
        state = _open_job(work, job, output_path, errors_path, overwrite, show)
        if state == "complete":
            manifest = _read_json(work / "manifest.json")
            show.message(f"{output_path} is already complete: {manifest['records']} records, "
                         f"{manifest['errors']} errors (pass --overwrite to score again)")
            return BatchReport(output_path, errors_path, manifest["records"], manifest["errors"],
                               manifest["chunks"], manifest["chunks"], time.perf_counter() - started)
        done = _committed(work)
        manifest = _read_json(work / "manifest.json")
        spec = {"sources": [(str(s.path), s.format, s.gzipped) for s in sources],
                "columns": dataclasses.asdict(columns),
                "task": task_name, "model": model_ref, "params": params, "mode": mode, "device": device,
                "threads": threads, "max_tokens": max_tokens, "chunk_size": chunk_size}
        size = sum(s.size for s in sources)
        show.message(f"{task_name} with {model_ref}: {len(sources)} file{'s' * (len(sources) > 1)} "
                     f"({size / 1e6:,.1f} MB) -> {output_path}, chunks of {chunk_size} records, {engine} engine")
        if done:
            show.message(f"resuming {output_path}: {len(done)} chunks ({sum(h['count'] for h in done.values())} "
                         f"records) already scored")
        show.start(total=manifest.get("total_records"), done=done)
        if engine == "local":
            n_chunks, n_records = _run_local(spec, sources, work, done, show)
        elif engine == "ray":
            n_chunks, n_records = _run_ray(spec, sources, work, done, show, ray_address, ray_actors,
                                           ray_cpus_per_actor, ray_gpus_per_actor)
        else:
            raise BatchError(f"unknown engine {engine!r}; expected local or ray")
        show.close()
        manifest.update(total_records=n_records, chunks=n_chunks)
        _write_json(work / "manifest.json", manifest)
        records, n_errors = _finalise(work, n_chunks, output_path, out_fmt, errors_path)
        manifest.update(status="complete", records=records, errors=n_errors)
        _write_json(work / "manifest.json", manifest)
        for part in work.glob("part-*.jsonl"):
            part.unlink()
    report = BatchReport(output_path, errors_path, records, n_errors, n_chunks, len(done),
                         time.perf_counter() - started)
    rate = (records + n_errors - sum(h["count"] for h in done.values())) / max(report.seconds, 1e-9)
    show.message(f"done: {records} records scored into {output_path}, {n_errors} bad records"
                 + (f" (reasons in {errors_path})" if n_errors else "")
                 + f"; {report.seconds:.1f}s, {rate:.1f} records/s")
    return report


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _default_model(task: str) -> str:
    from .pipelines import DEFAULT_MODELS

    return DEFAULT_MODELS[task]


def work_dir(output: Path) -> Path:
    """Where a job keeps its manifest and part files: `<output>.batch/` beside the output."""
    return output.with_name(output.name + ".batch")


def _model_fingerprint(path: Path) -> dict[str, Any]:
    """Config, tokenizer and weight files by content (size + head/tail hash), not by location."""
    keep = (".json", ".txt", ".safetensors", ".bin", ".model")
    return {f.name: rio.fingerprint(f) for f in sorted(path.iterdir()) if f.is_file() and f.suffix in keep}


# ---------------------------------------------------------------------------------- job state
class _lock:
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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, obj: dict) -> None:
    rio.atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, ensure_ascii=False)))


def _reset(work: Path, *files: Path) -> None:
    for entry in work.iterdir():
        if entry.name != "lock":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for f in files:
        f.unlink(missing_ok=True)


def _open_job(work: Path, job: dict, output: Path, errors_path: Path, overwrite: bool, show: "Progress") -> str:
    """'new', 'resume' or 'complete'; raises BatchError when the output belongs to another job."""
    for stale in [*work.glob(".*.tmp-*"), *output.parent.glob(f".{output.name}.tmp-*"),
                  *errors_path.parent.glob(f".{errors_path.name}.tmp-*")]:
        stale.unlink(missing_ok=True)  # files a killed run was writing; we hold the lock
    manifest_path = work / "manifest.json"
    if overwrite:
        _reset(work, output, errors_path)
    elif manifest_path.exists():
        manifest = _read_json(manifest_path)
        changed = _differences(manifest.get("job", {}), job)
        if changed:
            raise BatchError(f"{output} belongs to a different job ({'; '.join(changed)}). Pass --overwrite to "
                             f"start over (its results are deleted), or choose another output.")
        if manifest.get("status") == "complete":
            if output.exists():
                return "complete"
            show.message(f"{output} was complete but is gone: scoring again")
            _reset(work, errors_path)
        else:
            return "resume"
    elif output.exists():
        raise BatchError(f"{output} exists and no batch job manifest ({manifest_path}) says what made it; "
                         f"pass --overwrite to replace it")
    elif any(work.glob("part-*.jsonl")):
        _reset(work)
    _write_json(manifest_path, {"version": MANIFEST_VERSION, "status": "running", "job": job})
    return "new"


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    if old.get("task") != new["task"]:
        out.append(f"task {old.get('task')} -> {new['task']}")
    if old.get("inputs") != new["inputs"]:
        before = {i["path"]: i for i in old.get("inputs", [])}
        after = {i["path"]: i for i in new["inputs"]}
        what = [f"{p} removed" for p in before if p not in after] + [f"{p} added" for p in after if p not in before]
        what += [f"{p} changed" for p in after if p in before and before[p] != after[p]]
        out.append("input " + (", ".join(what) if what else "order changed"))
    if old.get("model") != new["model"]:
        out.append("model files changed")
    for key in ("params", "columns", "chunk_size", "mode"):
        if old.get(key) != new[key]:
            out.append(f"{key.replace('_', ' ')} {json.dumps(old.get(key))} -> {json.dumps(new[key])}")
    return out


def part_path(work: Path, index: int) -> Path:
    return work / f"part-{index:08d}.jsonl"


def _committed(work: Path) -> dict[int, dict]:
    """Chunk index -> part header, for every committed part."""
    done = {}
    for part in work.glob("part-*.jsonl"):
        with open(part, encoding="utf-8") as f:
            header = json.loads(f.readline())
        done[header["chunk"]] = header
    return done


def _finalise(work: Path, n_chunks: int, output: Path, out_fmt: str, errors_path: Path) -> tuple[int, int]:
    """Join parts 0..n-1 into the output and the errors file, each written aside and renamed: a
    kill here leaves the parts, and the rerun joins them again."""
    missing = [k for k in range(n_chunks) if not part_path(work, k).exists()]
    if missing:
        raise BatchError(f"chunks {missing[:5]} of {work} are missing; rerun to score them")
    headers = _committed(work)
    int_ids = all(headers[k]["int_ids"] for k in range(n_chunks))
    counts = [0, 0]
    tmp_errors = errors_path.with_name(f".{errors_path.name}.tmp-{os.getpid()}")

    def write(out):
        with open(tmp_errors, "w", encoding="utf-8") as err:
            writer = rio.OutputWriter(out, out_fmt, int_ids)
            for k in range(n_chunks):
                with open(part_path(work, k), encoding="utf-8") as f:
                    header = json.loads(f.readline())
                    lines = f.read().split("\n")[:-1]  # not splitlines(): results may hold U+2028
                writer.write(lines[: header["ok"]])
                err.write("".join(line + "\n" for line in lines[header["ok"]:]))
                counts[0] += header["ok"]
                counts[1] += header["errors"]
            writer.close()
            err.flush()
            os.fsync(err.fileno())
        os.replace(tmp_errors, errors_path)

    rio.atomic_write(output, write, mode="wb" if out_fmt == "parquet" else "w")
    return counts[0], counts[1]


# ---------------------------------------------------------------------------------- scoring
@dataclass
class Chunk:
    index: int
    first: int  # global position of its first record
    entries: list[tuple[int, rio.Item]]  # (source index, item)
    fraction: float = 0.0  # of the input bytes read once this chunk is


@dataclass
class Prepared:
    index: int
    first: int
    count: int
    ids: list
    inputs: list
    features: list
    owners: list
    errors: list[tuple[int, dict]]  # (position, error record)
    fraction: float = 0.0


class Scorer:
    """A chunk of raw records -> its part file text, through the task's featurize/forward/decode.
    Bad records (undecodable, missing or empty fields, refused by the task) become error records."""

    def __init__(self, task, params: dict, columns: Columns, sources: Sequence[rio.Source]):
        self.task = task
        self.p = task.params(**params)
        self.param_names = {f.name for f in dataclasses.fields(task.Params)}
        self.columns = columns
        self.fields = columns.for_task(task.name)
        self.sources = list(sources)
        self._headers: dict[int, list[str]] = {}

    def header(self, si: int) -> list[str] | None:
        if self.sources[si].format not in ("csv", "tsv"):
            return None
        if si not in self._headers:
            self._headers[si] = rio.csv_header(self.sources[si])
        return self._headers[si]

    def prepare(self, chunk: Chunk) -> Prepared:
        ids, inputs, positions, errors = [], [], [], []
        for offset, (si, item) in enumerate(chunk.entries):
            position = chunk.first + offset
            source = f"{self.sources[si].path}:{item.line}"
            record, why = rio.decode(self.sources[si], item, self.header(si))
            rid: Any = position
            field = None
            if record is not None:
                rid, x, why, field = self.to_input(record, position)
            if why is not None:
                errors.append((position, {"id": rid, "error": why, "field": field, "source": source}))
                continue
            ids.append(rid)
            inputs.append(x)
            positions.append((position, source))
        features, owners = [], []
        if inputs:
            try:
                features, owners = self.task.featurize(inputs, self.p)
            except InputError as e:
                if e.field in self.param_names:
                    raise  # a parameter that fails for every record is the job's error, not the records'
                keep = []
                for i, x in enumerate(inputs):  # find the bad records one by one
                    try:
                        f, _ = self.task.featurize([x], self.p)
                    except InputError as err:
                        if err.field in self.param_names:
                            raise
                        reason, field = self.explain(err)
                        errors.append((positions[i][0], {"id": ids[i], "error": reason, "field": field,
                                                         "source": positions[i][1]}))
                        continue
                    features += f
                    owners += [len(keep)] * len(f)
                    keep.append(i)
                ids, inputs = [ids[i] for i in keep], [inputs[i] for i in keep]
        errors.sort(key=lambda e: e[0])
        return Prepared(chunk.index, chunk.first, len(chunk.entries), ids, inputs, features, owners, errors,
                        chunk.fraction)

    def to_input(self, record: dict, position: int):
        """(id, task input, None, None) or (id, None, why, field)."""
        rid: Any = position
        if self.columns.id is not None:
            if record.get(self.columns.id) is None:
                return rid, None, f"missing id field {self.columns.id!r}", self.columns.id
            rid = record[self.columns.id]
        elif record.get("id") is not None:
            rid = record["id"]
        values = {}
        for key, column in self.fields.items():
            value = record.get(column)
            if value is None:
                why = f"missing field {column!r}" if column not in record else f"field {column!r} is null"
                return rid, None, why, column
            if not isinstance(value, str):
                return rid, None, f"field {column!r} must be a string, got {type(value).__name__}", column
            if not value.strip():
                return rid, None, f"field {column!r} is empty", column
            values[key] = value
        x = values if len(values) > 1 else values["text"]
        return rid, x, None, None

    def explain(self, e: InputError) -> tuple[str, str | None]:
        """A task's message about inputs[0] / examples[0] in terms of the record's columns."""
        text = self.fields.get("text", self.columns.text)

        def column(name: str | None) -> str | None:
            if name is None:
                return None
            if name.endswith(".text_pair"):
                return self.columns.text_pair
            if name.startswith(("inputs[", "examples[")):
                return text
            return self.fields.get(name, name)

        message = re.sub(r"^(?:examples|inputs)\[0\]:\s*", "", str(e))
        message = re.sub(r"inputs\[0\](?:\.text_pair|\.text)?",
                         lambda m: f"field {column(m.group(0))!r}", message)
        message = message.replace("examples[0]", "the record")
        return message, column(e.field)

    def forward(self, prepared: Prepared):
        return self.task.forward(prepared.features)

    def finish(self, prepared: Prepared, outputs) -> tuple[dict, str]:
        """(header, part text): a header line, then one line per scored record, then the errors."""
        results = self.task.decode(prepared.inputs, prepared.features, prepared.owners, outputs, self.p) \
            if prepared.inputs else []
        lines = [_dumps({"id": i, "result": r}) for i, r in zip(prepared.ids, results)]
        lines += [_dumps(e) for _, e in prepared.errors]
        header = {"chunk": prepared.index, "first": prepared.first, "count": prepared.count, "ok": len(results),
                  "errors": len(prepared.errors),
                  "int_ids": all(isinstance(i, int) and not isinstance(i, bool) for i in prepared.ids)}
        return header, "".join(line + "\n" for line in [_dumps(header), *lines])

    def score(self, chunk: Chunk) -> tuple[dict, str]:
        prepared = self.prepare(chunk)
        return self.finish(prepared, self.forward(prepared))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)


def _json_default(x: Any):
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)  # dates and the like, from Parquet ids


def build_scorer(spec: dict) -> Scorer:
    from .pipelines import pipeline

    task = pipeline(spec["task"], model=spec["model"], mode=spec["mode"], device=spec["device"],
                    threads=spec["threads"], max_tokens=spec["max_tokens"])
    sources = [rio.Source(Path(p), fmt, gz) for p, fmt, gz in spec["sources"]]
    return Scorer(task, spec["params"], Columns(**spec["columns"]), sources)


def commit(work: Path, index: int, text: str) -> None:
    rio.atomic_write(part_path(work, index), lambda f: f.write(text))


def iter_chunks(sources: Sequence[rio.Source], chunk_size: int, columns: list[str]) -> Iterator[Chunk]:
    """The input as consecutive chunks of `chunk_size` records (across file boundaries), undecoded."""
    sizes = [max(1, s.size) for s in sources]
    total = sum(sizes)
    entries: list[tuple[int, rio.Item]] = []
    index = first = 0
    read_before = 0
    fraction = 0.0
    for si, src in enumerate(sources):
        for item in rio.items(src, columns):
            entries.append((si, item))
            if len(entries) == chunk_size:
                fraction = (read_before + item.done * sizes[si]) / total
                yield Chunk(index, first, entries, fraction)
                index, first, entries = index + 1, first + chunk_size, []
        read_before += sizes[si]
    if entries:
        yield Chunk(index, first, entries, 1.0)


def chunk_segments(chunk: Chunk) -> list[tuple[int, int, int, int]]:
    """Where a chunk's records lie: [(source index, start, line, count)], one per file it touches."""
    segments: list[list[int]] = []
    for si, item in chunk.entries:
        if segments and segments[-1][0] == si:
            segments[-1][3] += 1
        else:
            segments.append([si, item.start, item.line, 1])
    return [tuple(s) for s in segments]  # type: ignore[misc]


def read_segments(sources: Sequence[rio.Source], segments, columns: list[str]) -> list[tuple[int, rio.Item]]:
    """A chunk's records read on their own, from the addresses `chunk_segments` gave."""
    entries = []
    for si, start, line, count in segments:
        it = rio.items(sources[si], columns, start=start, line=line)
        for _ in range(count):
            entries.append((si, next(it)))
        it.close()
    return entries


# ---------------------------------------------------------------------------------- engines
_END = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def _run_local(spec: dict, sources, work: Path, done: dict, show: "Progress") -> tuple[int, int]:
    """Three stages over bounded queues: [read, decode, tokenize] -> [model] -> [decode, commit].
    The Rust tokenizer and torch release the GIL, so the next chunk is tokenized during this one's
    forward pass; at most ~4 chunks are in memory."""
    scorer = build_scorer(spec)
    show.clock()  # records/s counts scoring, not loading the model
    columns = Columns(**spec["columns"]).needed(scorer.task.name)
    prepared_q: queue.Queue = queue.Queue(maxsize=1)
    scored_q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    failures: list[BaseException] = []
    totals = {"chunks": 0, "records": 0}

    def produce():
        try:
            for chunk in iter_chunks(sources, spec["chunk_size"], columns):
                totals["chunks"], totals["records"] = chunk.index + 1, chunk.first + len(chunk.entries)
                if chunk.index in done:
                    show.skipped(chunk.fraction)
                    continue
                if not _put(prepared_q, scorer.prepare(chunk), stop):
                    return
            _put(prepared_q, _END, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            failures.append(e)
            stop.set()

    def finish():
        try:
            while True:
                item = _get(scored_q, stop)
                if item is _END:
                    return
                prepared, outputs = item
                header, text = scorer.finish(prepared, outputs)
                commit(work, prepared.index, text)
                show.committed(header, prepared.fraction)
        except BaseException as e:  # noqa: BLE001
            failures.append(e)
            stop.set()

    threads = [threading.Thread(target=produce, name="batch-read", daemon=True),
               threading.Thread(target=finish, name="batch-write", daemon=True)]
    for t in threads:
        t.start()
    try:
        while True:
            prepared = _get(prepared_q, stop)
            if prepared is _END:
                break
            if not _put(scored_q, (prepared, scorer.forward(prepared)), stop):
                break
        _put(scored_q, _END, stop)
        threads[1].join()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    if failures:
        raise failures[0]
    return totals["chunks"], totals["records"]


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


def _run_ray(spec: dict, sources, work: Path, done: dict, show: "Progress", address: str | None,
             actors: int | None, cpus: float, gpus: float) -> tuple[int, int]:
    """Chunks are found on the driver (a pass that reads but does not decode), scored by an actor pool
    through Ray Data, and committed by the driver as they come back (in any order)."""
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
    show.start(total=n_records, done=done)
    if not pending:
        return n_chunks, n_records
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    quiet = logging.getLogger("ray.data")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # our own progress replaces Ray Data's bars and their warnings
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
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
            show.committed(json.loads(text[: text.index("\n")]), None)
    finally:
        quiet.setLevel(level)
        if started:
            ray.shutdown()
    return n_chunks, n_records


# ---------------------------------------------------------------------------------- progress
class Progress:
    """Records/s and ETA: a redrawn bar on a terminal, a plain line every `interval` s otherwise."""

    def __init__(self, mode: str = "auto", interval: float = 30.0, stream=None):
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.interval = mode, interval
        self.lock = threading.Lock()
        self.total: int | None = None
        self.done = self.errors = self.resumed = 0
        self.fraction = self.fraction0 = 0.0
        self.t0 = self.last = time.monotonic()

    def start(self, total: int | None, done: dict) -> None:
        self.total = total
        self.resumed = sum(h["count"] for h in done.values())
        self.done = self.resumed
        self.errors = sum(h["errors"] for h in done.values())
        self.t0 = self.last = time.monotonic()

    def clock(self) -> None:
        with self.lock:
            self.t0 = self.last = time.monotonic()

    def message(self, text: str) -> None:
        if self.mode != "none":
            with self.lock:
                self.stream.write(("\r\033[K" if self.mode == "bar" else "") + f"batch: {text}\n")
                self.stream.flush()

    def skipped(self, fraction: float) -> None:
        with self.lock:
            self.fraction = max(self.fraction, fraction)
            if self.done == self.resumed:  # nothing scored yet: the rate and ETA count this run's work only
                self.fraction0 = self.fraction
                self.t0 = time.monotonic()

    def committed(self, header: dict, fraction: float | None) -> None:
        with self.lock:
            self.done += header["count"]
            self.errors += header["errors"]
            if fraction is not None:
                self.fraction = max(self.fraction, fraction)
            now = time.monotonic()
            due = self.interval if self.mode == "lines" else 0.2
            if self.mode != "none" and now - self.last >= due:
                self.last = now
                self._draw(now)

    def close(self) -> None:
        if self.mode == "bar":
            with self.lock:
                self._draw(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.done - self.resumed) / elapsed
        if self.total:
            share = self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
        else:  # records unknown until the end: go by the bytes read
            share = self.fraction
            gained = self.fraction - self.fraction0
            eta = elapsed * (1 - self.fraction) / gained if gained > 0 else math.inf
        count = f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"
        tail = f"{count} records  {rate:,.1f} rec/s  ETA {_clock(eta)}  {self.errors:,} errors"
        if self.mode == "bar":
            width = 24
            fill = int(round(share * width))
            self.stream.write(f"\r\033[K{share:4.0%} |{'#' * fill}{'.' * (width - fill)}| {tail}")
        else:
            self.stream.write(f"batch: {share:.0%} {tail}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


# ---------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """Flags made from `run_batch`'s signature: names, types, defaults, choices and help."""
    parser = argparse.ArgumentParser(
        prog="distilkit batch",
        description="Score JSONL, CSV or Parquet files with one task: length-sorted token-budget batches, "
                    "a progress display, bad records to an errors file, and resume: rerun the same "
                    "command after a kill and it continues where it stopped.")
    hints = typing.get_type_hints(run_batch, include_extras=True)
    import inspect

    for name, param in inspect.signature(run_batch).parameters.items():
        hint = hints[name]
        help_text = hint.__metadata__[0] if typing.get_origin(hint) is Annotated else None
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        flag = "--" + name.replace("_", "-")
        required = param.default is inspect.Parameter.empty
        kwargs: dict[str, Any] = {"help": help_text, "dest": name}
        if not required:
            kwargs["default"] = param.default
            if param.default not in (None, False) and "default" not in (help_text or ""):
                kwargs["help"] = f"{help_text} (default: {param.default})"
        else:
            kwargs["required"] = True
        options = [a for a in typing.get_args(base) if a is not type(None)] or [base]
        if base is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(base) is Literal:
            kwargs["choices"] = typing.get_args(base)
        elif any(typing.get_origin(o) is list for o in options):
            kwargs["nargs"] = "+"
        elif dict in options:
            kwargs["type"] = _json_object
            kwargs["metavar"] = "JSON"
        elif options[0] in (int, float):
            kwargs["type"] = options[0]
        parser.add_argument(flag, **kwargs)
    return parser


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .hub import CheckpointError, ModelNotFoundError  # not .checkpoint: that imports torch

    try:
        report = run_batch(**vars(args))
    except (BatchError, InputError, ModelNotFoundError, CheckpointError, FileNotFoundError, ImportError,
            ValueError) as e:
        print(f"distilkit batch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ndistilkit batch: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    return 1 if report.errors and not report.records else 0


if __name__ == "__main__":
    sys.exit(main())
