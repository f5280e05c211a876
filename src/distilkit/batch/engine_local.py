"""The local engine: three threads over bounded queues, [read, decode, tokenize] -> [model] ->
[decode, commit]. The Rust tokenizer and torch release the GIL, so the next chunk is tokenized
during this one's forward pass; at most ~4 chunks are in memory."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

from ..progress import Progress
from .parts import commit, iter_chunks
from .scorer import Columns, Prepared, build_scorer

_END = object()


class Tally:
    """A job's records on its progress display: credited as a chunk's batches finish (so the count
    moves inside a chunk), settled to the exact count when the chunk commits."""

    def __init__(self, show: Progress, errors: int = 0):
        self.show = show
        self.errors = errors
        self.credited: dict[int, int] = {}  # chunk -> records credited before its commit

    def skipped(self, fraction: float, through: int) -> None:
        self.show.set_fraction(fraction, through)

    def inside(self, prepared: Prepared, share: float) -> None:
        n = int(len(prepared.inputs) * share)  # about how many of its records the model is done with
        before = self.credited.get(prepared.index, 0)
        if n > before:
            self.credited[prepared.index] = n
            self.show.update(n - before)

    def committed(self, header: dict, fraction: float | None) -> None:
        """`fraction`: of the input read through this chunk, when chunks commit in order."""
        self.errors += header["errors"]
        if fraction is not None:
            self.show.set_fraction(fraction, header["first"] + header["count"])
        self.show.update(header["count"] - self.credited.pop(header["chunk"], 0), errors=self.errors)


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


def run_local(spec: dict, sources, work: Path, done: dict, tally: Tally) -> tuple[int, int]:
    """Score every chunk not in `done`; (chunks, records) of the whole input."""
    scorer = build_scorer(spec)
    tally.show.restart_clock()  # records/s counts scoring, not loading the model
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
                    tally.skipped(chunk.fraction, chunk.first + len(chunk.entries))
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
                tally.committed(header, prepared.fraction)
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
            if not _put(scored_q, (prepared, scorer.forward(prepared, tally.inside)), stop):
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
