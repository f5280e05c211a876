"""Record sources: JSON Lines, CSV/TSV (either optionally gzipped) and Parquet input files.

Readers stream `Item`s, each one record's address in its file (byte offset or row), line number
and undecoded payload, so memory stays bounded whatever the file size and a resumed job can skip
records without decoding them. `decode` turns a payload into a dict or the reason it cannot be one.
`items(..., start=...)` begins at a record's address, so one chunk can be read on its own (the Ray
engine's workers do). A UTF-8 byte-order mark at the start of a text file is not part of its first
record, in every text format.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, NamedTuple

INPUT_FORMATS = ("jsonl", "csv", "tsv", "parquet")
BOM = "\ufeff"
_BOM_BYTES = BOM.encode("utf-8")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
             ".parquet": "parquet", ".pq": "parquet"}


class Item(NamedTuple):
    start: int  # byte offset of the record (text formats; uncompressed for .gz) or its row (Parquet)
    line: int  # 1-based line (text) or row number (Parquet), for messages
    done: float  # fraction of the file consumed once this record is read, for progress
    raw: Any  # bytes (JSONL), list[str] (CSV), (rows, i) (Parquet): `decode` makes a dict of it


@dataclass(frozen=True)
class Source:
    """One input file and how to read it."""

    path: Path
    format: str  # one of INPUT_FORMATS
    gzipped: bool = False

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def detect_format(path: str | os.PathLike, override: str | None = None) -> tuple[str, bool]:
    """(format, gzipped) from the name (`.jsonl`, `.csv.gz`, `.parquet`, ...) unless `override` names one."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    if override and override != "auto":
        if override not in INPUT_FORMATS:
            raise ValueError(f"unknown input format {override!r}; expected one of {', '.join(INPUT_FORMATS)}")
        fmt = override
    elif suffixes and suffixes[-1] in _SUFFIXES:
        fmt = _SUFFIXES[suffixes[-1]]
    else:
        raise ValueError(f"cannot tell the format of {p} from its name; name it .jsonl, .csv, .tsv or .parquet "
                         f"(optionally .gz for text), or pass --input-format")
    if gzipped and fmt == "parquet":
        raise ValueError(f"{p}: Parquet files are compressed inside; do not gzip them")
    return fmt, gzipped


def expand_inputs(patterns: str | Iterable[str], override: str | None = None,
                  exclude: Iterable[Path] = ()) -> list[Source]:
    """Paths and globs -> sources, each glob's matches sorted, duplicates and `exclude` dropped."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    skip = {Path(p).resolve() for p in exclude}  # files, or folders whose contents are left out
    out: list[Source] = []
    seen: set[Path] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if not Path(m).is_dir()]
        if not matches or not Path(matches[0]).exists():
            raise FileNotFoundError(f"no input file matches {pattern!r}")
        for m in matches:
            real = Path(m).resolve()
            if real in seen or real in skip or any(parent in skip for parent in real.parents):
                continue
            seen.add(real)
            out.append(Source(Path(m), *detect_format(m, override)))
    if not out:
        raise FileNotFoundError(f"no input files in {', '.join(map(str, patterns))}")
    return out


# ---------------------------------------------------------------------------------- reading
def items(src: Source, columns: Iterable[str] | None = None, start: int | None = None, line: int = 1) -> Iterator[Item]:
    """The records of one file in order, from the record at `start` (its `Item.start`, with its
    `line`) or from the first. `columns`: Parquet reads only these (when present)."""
    if src.format == "jsonl":
        return _jsonl_items(src, start, line)
    if src.format in ("csv", "tsv"):
        return _csv_items(src, start, line)
    return _parquet_items(src, columns, start)


def decode(src: Source, item: Item, header: list[str] | None = None) -> tuple[dict | None, str | None]:
    """(record, None) or (None, why it is not a record). CSV needs the file's `header`."""
    if src.format == "jsonl":
        try:
            text = item.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"line {item.line} is not valid UTF-8 ({e.reason} at byte {e.start})"
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            return None, f"line {item.line} is not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(record, dict):
            return None, f"line {item.line} is a JSON {type(record).__name__}, not an object"
        return record, None
    if src.format in ("csv", "tsv"):
        row = item.raw
        if header is None:
            raise ValueError("CSV records need the header")
        if len(row) != len(header):
            return None, f"line {item.line} has {len(row)} fields, the header has {len(header)}"
        for value in row:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # surrogate escapes stand for bytes that were not UTF-8
                return None, f"line {item.line} is not valid UTF-8"
        return dict(zip(header, row)), None
    rows, i = item.raw
    return rows.rows[i], None


def csv_header(src: Source) -> list[str]:
    """The first row of a CSV/TSV file (a UTF-8 byte-order mark dropped)."""
    with _open_binary(src) as (f, _raw):
        reader = csv.reader(_text_lines(f, [0, 0]), delimiter=_delimiter(src))
        for row in reader:
            if row:
                if row[0].startswith(BOM):
                    row[0] = row[0][1:]
                return row
    return []


class _open_binary:
    """(reader, underlying file): a GzipFile over the file for .gz, else the file twice."""

    def __init__(self, src: Source):
        self.src = src

    def __enter__(self):
        self.raw = open(self.src.path, "rb")
        self.f = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.src.gzipped else self.raw
        return self.f, self.raw

    def __exit__(self, *exc):
        if self.f is not self.raw:
            self.f.close()
        self.raw.close()


def _delimiter(src: Source) -> str:
    return "\t" if src.format == "tsv" else ","


def _text_lines(f: IO[bytes], state: list[int]) -> Iterator[str]:
    """Lines of a binary file as text, counting bytes (state[0]) and lines (state[1]) consumed.
    Bytes that are not UTF-8 become surrogate escapes, so one bad line does not stop the file."""
    for b in f:
        state[0] += len(b)
        state[1] += 1
        yield b.decode("utf-8", "surrogateescape")


def _jsonl_items(src: Source, start: int | None, line: int) -> Iterator[Item]:
    size = max(1, src.size)
    with _open_binary(src) as (f, raw):
        offset = start or 0
        if offset:
            f.seek(offset)
        line -= 1
        for b in f:
            line += 1
            here = offset
            offset += len(b)
            if here == 0 and b.startswith(_BOM_BYTES):  # Windows editors write one; it is not data
                b = b[len(_BOM_BYTES):]
            if not b.strip():  # blank lines are not records
                continue
            yield Item(here, line, min(1.0, (raw.tell() if src.gzipped else offset) / size), b)


def _csv_items(src: Source, start: int | None, line: int) -> Iterator[Item]:
    # csv.reader pulls one line at a time and stops at the end of a record, so the byte count when
    # it hands a row back is where the next record starts: that is a seekable record address.
    size = max(1, src.size)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with _open_binary(src) as (f, raw):
        state = [0, 0]  # bytes, lines consumed
        reader = csv.reader(_text_lines(f, state), delimiter=_delimiter(src))
        if start is None:  # skip the header
            for row in reader:
                if row:
                    break
            here, line = state[0], state[1] + 1
        else:
            f.seek(start)
            state[:] = [start, line - 1]
            here = start
        for row in reader:
            if row:  # csv skips blank lines the same way
                yield Item(here, line, min(1.0, raw.tell() / size), row)
            here, line = state[0], state[1] + 1


class _Rows:
    """A Parquet record batch whose Python rows are built only if a record is decoded."""

    def __init__(self, batch):
        self.batch = batch
        self._rows: list[dict] | None = None

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = self.batch.to_pylist()
        return self._rows


def _parquet_items(src: Source, columns: Iterable[str] | None, start: int | None) -> Iterator[Item]:
    pq = require_pyarrow().parquet
    pf = pq.ParquetFile(src.path)
    meta = pf.metadata
    total = max(1, meta.num_rows)
    names = set(pf.schema_arrow.names)
    wanted = [c for c in dict.fromkeys(columns)] if columns is not None else None
    if wanted is not None:
        wanted = [c for c in wanted if c in names] or None  # no mapped column at all: read all, records will say so
    start = start or 0
    # First row group holding `start`, and how many of its rows come before it.
    group, first = 0, 0
    while group < meta.num_row_groups and first + meta.row_group(group).num_rows <= start:
        first += meta.row_group(group).num_rows
        group += 1
    if group >= meta.num_row_groups:
        return
    row = first
    for batch in pf.iter_batches(batch_size=4096, row_groups=range(group, meta.num_row_groups), columns=wanted):
        rows = _Rows(batch)
        for i in range(batch.num_rows):
            if row >= start:
                yield Item(row, row + 1, (row + 1) / total, (rows, i))
            row += 1


def require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("Parquet needs pyarrow: pip install 'distilkit[parquet]'") from None
    return pyarrow
