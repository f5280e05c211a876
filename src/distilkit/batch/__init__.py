"""`distilkit batch`: score record files (JSONL, CSV, Parquet) with one task, resumably.

The input streams through in chunks of `chunk_size` records. Each chunk goes through the task's own
featurize -> forward -> decode loop and is committed as one part file in `<output>.batch/`; a
killed job loses at most the chunks in flight, and a rerun skips the committed ones. Once every
chunk is in, the parts are joined in input order into the output. `run_batch` (here) runs a job;
its signature is the CLI. The pieces, one concern a file:

    job.py            the job's fingerprint, manifest, lock, and start / resume / refuse
    sources.py        record sources: JSONL, CSV/TSV (.gz) and Parquet readers, record addresses
    parts.py          chunks and their part files (the journal), and the join into the output
    sinks.py          record sinks: the output formats, atomic writes
    scorer.py         a chunk of records -> a part: ids, error records, the task's loop
    engine_local.py   three overlapping threads on this machine
    engine_ray.py     a Ray Data actor pool
    cli.py            the command: flags, one-line errors, signals
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from ..config import Mode
from ..errors import InputError
from ..progress import progress as _progress
from . import sources as rio
from .cli import build_parser, main
from .engine_local import Tally, run_local
from .job import BatchError, Lock, model_fingerprint, open_job, read_json, work_dir, write_json
from .job import fingerprint as _fingerprint
from .parts import chunk_segments, committed, iter_chunks, read_segments
from .parts import join_parts as _finalise  # a name tests replace to kill the join
from .scorer import Columns, Scorer
from .sinks import output_format

__all__ = ["BatchError", "BatchReport", "Columns", "InputError", "Scorer", "build_parser", "chunk_segments",
           "iter_chunks", "main", "read_segments", "run_batch", "work_dir"]

DEFAULT_CHUNK = 2048
DEFAULT_CHUNK_FILL_MASK = 256  # its outputs are (masks, vocab) floats per record: ~120 KB each


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
    duplicates: int = 0  # records whose id an earlier record of the job already had (all are kept)


TaskName = Literal["question-answering", "fill-mask", "text-classification", "token-classification",
                   "feature-extraction", "sentence-embedding", "zero-shot-classification", "text-ranking",
                   "qa", "ner", "sentiment-analysis", "text-embedding"]


def run_batch(
    input: Annotated[str | list[str], "input files or globs (JSONL, CSV, TSV, Parquet; .gz for text), "
                                      "read in the order given, each glob's matches sorted"],
    output: Annotated[str, "output file: .jsonl, .csv or .parquet; one {id, result} record per input record "
                           "(vectors: a fixed-size float32 list column in Parquet; .npy: an (id, embedding) array)"],
    task: Annotated[TaskName, "the task"],
    model: Annotated[str | None, "local directory or hub id (default: the task's seed checkpoint, "
                                 "or $DISTILKIT_MODEL)"] = None,
    params: Annotated[dict | None, "task parameters as a JSON object, e.g. '{\"top_k\": 2}'"] = None,
    text_column: Annotated[str, "field holding the text (fill-mask, text- and token-classification)"] = "text",
    text_pair_column: Annotated[str | None, "field holding the second text of a pair (text-classification)"] = None,
    question_column: Annotated[str, "field holding the question (question-answering)"] = "question",
    context_column: Annotated[str, "field holding the context (question-answering)"] = "context",
    query_column: Annotated[str, "field holding the query (text-ranking)"] = "query",
    texts_column: Annotated[str, "field holding the list of texts to rank against the query (text-ranking)"] = "texts",
    id_column: Annotated[str | None, "field holding the record id (default: `id` when present, else the "
                                     "record's 0-based position across all inputs)"] = None,
    input_format: Annotated[Literal["auto", "jsonl", "csv", "tsv", "parquet"],
                            "input format (default: from each file's extension)"] = "auto",
    errors: Annotated[str | None, "errors file, JSONL: {id, position, error, field, source} per bad record "
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
    progress_interval: Annotated[float | None, "seconds between plain progress lines (default: "
                                               "$DISTILKIT_PROGRESS_INTERVAL, else 10)"] = None,
) -> BatchReport:
    """Score every record of `input` with `task` into `output`, resuming a killed run of the same job."""
    from ..pipelines import task_class

    started = time.perf_counter()
    cls = task_class(task)
    task_name = cls.name
    output_path = Path(output)
    out_fmt = output_format(output_path)
    errors_path = Path(errors) if errors else output_path.with_name(_stem(output_path) + ".errors.jsonl")
    if errors_path.resolve() == output_path.resolve():
        raise BatchError("the errors file and the output are the same file")
    chunk_size = chunk_size or (DEFAULT_CHUNK_FILL_MASK if task_name == "fill-mask" else DEFAULT_CHUNK)
    if chunk_size < 1:
        raise BatchError(f"chunk_size must be at least 1, got {chunk_size}")
    if progress_interval is not None and not progress_interval > 0:
        raise BatchError(f"progress_interval must be a positive number of seconds, got {progress_interval}")
    if out_fmt == "npy" and not (task_name == "sentence-embedding" or (
            task_name == "feature-extraction" and (params or {}).get("pooling", "none") != "none")):
        raise BatchError(".npy holds embeddings: run sentence-embedding (or feature-extraction with a pooling), "
                         "or write .jsonl, .csv or .parquet")
    if out_fmt == "parquet" or input_format == "parquet":
        rio.require_pyarrow()
    work = work_dir(output_path)
    sources = rio.expand_inputs(input, input_format, exclude=[output_path, errors_path, work])
    if any(s.format == "parquet" for s in sources):
        rio.require_pyarrow()
    columns = Columns(text_column, text_pair_column, question_column, context_column, id_column, query_column,
                      texts_column)

    params = dict(params or {})
    if task_name == "text-classification" and "top_k" in params:
        params["legacy"] = False  # top_k given: a sorted list per input, as the pipeline does
    from ..tasks.base import build_params

    build_params(cls.Params, params, task_name)  # InputError before anything is loaded

    model_ref = str(model or os.environ.get("DISTILKIT_MODEL") or _default_model(task_name))
    from ..hub import resolve

    model_path = resolve(model_ref)
    job = {
        "task": task_name,
        "inputs": [{"path": str(s.path.resolve()), "format": s.format, "gzip": s.gzipped, **_fingerprint(s.path)}
                   for s in sources],
        "model": model_fingerprint(model_path),
        "params": params,
        "columns": dataclasses.asdict(columns),
        "chunk_size": chunk_size,
        "mode": mode,
    }

    def say(text: str) -> None:
        if progress != "none":
            print(f"batch: {text}", file=sys.stderr, flush=True)

    work.mkdir(parents=True, exist_ok=True)
    with Lock(work, output_path):
        state = open_job(work, job, output_path, errors_path, overwrite, say)
        if state == "complete":
            manifest = read_json(work / "manifest.json")
            say(f"{output_path} is already complete: {manifest['records']} records, "
                f"{manifest['errors']} errors (pass --overwrite to score again)")
            return BatchReport(output_path, errors_path, manifest["records"], manifest["errors"],
                               manifest["chunks"], manifest["chunks"], time.perf_counter() - started,
                               duplicates=manifest.get("duplicates", 0))
        done = committed(work)
        manifest = read_json(work / "manifest.json")
        spec = {"sources": [(str(s.path), s.format, s.gzipped) for s in sources],
                "columns": dataclasses.asdict(columns),
                "task": task_name, "model": model_ref, "params": params, "mode": mode, "device": device,
                "threads": threads, "max_tokens": max_tokens, "chunk_size": chunk_size}
        size = sum(s.size for s in sources)
        say(f"{task_name} with {model_ref}: {len(sources)} file{'s' * (len(sources) > 1)} "
            f"({size / 1e6:,.1f} MB) -> {output_path}, chunks of {chunk_size} records, {engine} engine")
        resumed = sum(h["count"] for h in done.values())
        if done:
            say(f"resuming {output_path}: {len(done)} chunks ({resumed} records) already scored")
        show = _progress(manifest.get("total_records"), "batch", "records", initial=resumed,
                         mode=None if progress == "auto" else progress, interval=progress_interval,
                         enabled=progress != "none")
        tally = Tally(show, errors=sum(h["errors"] for h in done.values()))
        show.set_postfix(errors=tally.errors)
        try:
            if engine == "local":
                n_chunks, n_records = run_local(spec, sources, work, done, tally)
            elif engine == "ray":
                from .engine_ray import run_ray

                n_chunks, n_records = run_ray(spec, sources, work, done, tally, ray_address, ray_actors,
                                              ray_cpus_per_actor, ray_gpus_per_actor)
            else:
                raise BatchError(f"unknown engine {engine!r}; expected local or ray")
            show.close()
            manifest.update(total_records=n_records, chunks=n_chunks)
            write_json(work / "manifest.json", manifest)
            joined = _finalise(work, n_chunks, output_path, out_fmt, errors_path)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under the CLI: say what is kept
            show.close()
            parts = committed(work)
            of = f" of {manifest['chunks']}" if manifest.get("chunks") else ""
            say(f"stopped ({str(e) or 'SIGINT'}): {len(parts)}{of} chunks committed "
                f"({sum(h['count'] for h in parts.values()):,} records) in {work}; "
                f"rerun the same command to continue from there")
            raise
        manifest.update(status="complete", records=joined.records, errors=joined.errors,
                        duplicates=joined.duplicates)
        write_json(work / "manifest.json", manifest)
        for part in work.glob("part-*.jsonl"):
            part.unlink()
    report = BatchReport(output_path, errors_path, joined.records, joined.errors, n_chunks, len(done),
                         time.perf_counter() - started, duplicates=joined.duplicates)
    dups = (f"; {joined.duplicates:,} records repeat an earlier id (e.g. "
            f"{', '.join(map(repr, joined.examples))}), all kept" if joined.duplicates else "")
    show.summary(f"{joined.records:,} scored into {output_path}, {joined.errors:,} bad"
                 + (f" (reasons in {errors_path})" if joined.errors else "") + dups)
    return report


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _default_model(task: str) -> str:
    from ..pipelines import DEFAULT_MODELS

    return DEFAULT_MODELS[task]
