"""Record sinks: the output file, JSON Lines, CSV or Parquet, and the atomic writes everything uses.

A sink takes result rows, each the JSON text of `{"id": ..., "result": ...}`, in input order. New
outputs (embeddings as fixed-size float lists, `.npy`) are a `Sink` subclass registered in `SINKS`
under the format its file suffix names in `SUFFIXES`; the join (`parts.join_parts`) needs nothing
else. `atomic_write` is how the job writes every file it owns: aside, fsync, rename.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Callable

from .sources import require_pyarrow

SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
            ".pq": "parquet", ".npy": "npy"}
INT64 = (-(2**63), 2**63 - 1)


def output_format(path: str | os.PathLike) -> str:
    fmt = SUFFIXES.get(Path(path).suffix.lower())
    if fmt not in SINKS:
        raise ValueError(f"cannot tell the output format of {path}: name it "
                         f"{', '.join(sorted({s for s, f in SUFFIXES.items() if f in SINKS}))}")
    return fmt


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "w") -> None:
    """Write beside `path`, fsync, rename over it and fsync the folder: readers (and a rerun after
    a kill) see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kwargs = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
    with open(tmp, mode, **kwargs) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - folders cannot be opened there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_int64(value: Any) -> bool:
    """Whether an id fits an int64 column (bools are not integers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1]


def id_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


class Sink:
    """One output file. `int_ids`: every id of the job is an integer that fits int64, so typed
    outputs may store ids as int64; otherwise ids are text (an integer past int64 included)."""

    binary = False  # the file is opened in binary mode

    def __init__(self, f: IO, int_ids: bool):
        self.f, self.int_ids = f, int_ids

    def write(self, lines: list[str]) -> None:
        """`lines`: JSON texts of {"id": ..., "result": ...}, one per record, without newlines."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class JsonlSink(Sink):
    """The part lines as they are: no decoding, ids exactly as the input gave them."""

    def write(self, lines: list[str]) -> None:
        self.f.write("".join(line + "\n" for line in lines))


class CsvSink(Sink):
    """Two columns, `id` and `result` (the task result as JSON text)."""

    def __init__(self, f: IO, int_ids: bool):
        super().__init__(f, int_ids)
        self.csv = csv.writer(f, lineterminator="\n")
        self.csv.writerow(["id", "result"])

    def write(self, lines: list[str]) -> None:
        rows = [json.loads(line) for line in lines]
        self.csv.writerows([id_text(r["id"]), json.dumps(r["result"], ensure_ascii=False)] for r in rows)


def is_vector(result: Any) -> bool:
    """A pooled embedding: a non-empty flat list of numbers (no other task's result is one)."""
    return isinstance(result, list) and bool(result) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in result)


class ParquetSink(Sink):
    """Two columns: `id` (int64 when every id fits, else string) and `result`: JSON text, or for
    embeddings a fixed-size list of float32 (what vector stores and pyarrow/pandas read as arrays).
    The first scored record decides; every record of a job has the same kind of result."""

    binary = True

    def __init__(self, f: IO, int_ids: bool):
        super().__init__(f, int_ids)
        self.pa = require_pyarrow()
        self.parquet = None
        self.dim: int | None = None

    def _open(self, first: Any) -> None:
        pa = self.pa
        self.dim = len(first) if is_vector(first) else None
        result = pa.list_(pa.float32(), self.dim) if self.dim else pa.string()
        self.schema = pa.schema([("id", pa.int64() if self.int_ids else pa.string()), ("result", result)])
        self.parquet = pa.parquet.ParquetWriter(self.f, self.schema)

    def write(self, lines: list[str]) -> None:
        rows = [json.loads(line) for line in lines]
        if not rows:
            return
        if self.parquet is None:
            self._open(rows[0]["result"])
        ids = [r["id"] if self.int_ids else id_text(r["id"]) for r in rows]
        if self.dim:
            results = [r["result"] for r in rows]
            if any(len(v) != self.dim for v in results):
                raise ValueError(f"embeddings of different sizes in one job (expected {self.dim})")
        else:
            results = [json.dumps(r["result"], ensure_ascii=False) for r in rows]
        self.parquet.write_table(self.pa.table({"id": ids, "result": results}, schema=self.schema))

    def close(self) -> None:
        if self.parquet is None:  # no scored record: an empty file of the plain schema
            self._open(None)
        self.parquet.close()


class NpySink(Sink):
    """Embeddings as one .npy structured array, fields `id` (int64, else text) and `embedding`
    (float32, (dim,)): `np.load(path)["embedding"]` is the (N, dim) matrix, row i of record
    `["id"][i]` (bad records are left out, so rows need their ids). The array is built in memory
    (N x dim x 4 bytes) and written at the end."""

    binary = True

    def __init__(self, f: IO, int_ids: bool):
        super().__init__(f, int_ids)
        self.ids: list = []
        self.vectors: list = []

    def write(self, lines: list[str]) -> None:
        for line in lines:
            row = json.loads(line)
            if not is_vector(row["result"]):
                raise ValueError(".npy holds embeddings (sentence-embedding, or feature-extraction with a pooling); "
                                 "write other results to .jsonl, .csv or .parquet")
            self.ids.append(row["id"] if self.int_ids else id_text(row["id"]))
            self.vectors.append(row["result"])

    def close(self) -> None:
        import numpy as np

        dim = len(self.vectors[0]) if self.vectors else 0
        width = max((len(i) for i in self.ids), default=1) if not self.int_ids else 0
        dtype = np.dtype([("id", np.int64 if self.int_ids else f"U{width}"), ("embedding", np.float32, (dim,))])
        out = np.empty(len(self.ids), dtype=dtype)
        if self.ids:
            out["id"] = self.ids
            out["embedding"] = np.asarray(self.vectors, dtype=np.float32)
        np.save(self.f, out, allow_pickle=False)


SINKS: dict[str, type[Sink]] = {"jsonl": JsonlSink, "csv": CsvSink, "parquet": ParquetSink, "npy": NpySink}
