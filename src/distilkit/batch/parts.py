"""Chunks and their part files: the unit of work, of memory and of resume.

The input is cut into chunks of `chunk_size` records; chunk k is the same records in every run.
A scored chunk is committed as `part-<k>.jsonl` (a header line, its results, then its error
records), written aside and renamed, so a part exists whole or not at all: the set of parts is the
journal. `join_parts` joins them in order into the output and the errors file, and counts the
duplicate ids the header lines list.
"""

from __future__ import annotations

import json
import os
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import sources as rio
from .sinks import SINKS, atomic_write


@dataclass
class Chunk:
    index: int
    first: int  # global position of its first record
    entries: list[tuple[int, rio.Item]]  # (source index, item)
    fraction: float = 0.0  # of the input bytes read once this chunk is


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


def part_path(work: Path, index: int) -> Path:
    return work / f"part-{index:08d}.jsonl"


def commit(work: Path, index: int, text: str) -> None:
    atomic_write(part_path(work, index), lambda f: f.write(text))


def committed(work: Path) -> dict[int, dict]:
    """Chunk index -> part header, for every committed part."""
    done = {}
    for part in work.glob("part-*.jsonl"):
        header = _header(part)
        header.pop("ids", None)  # read again, one part at a time, by count_duplicates
        done[header["chunk"]] = header
    return done


def _header(part: Path) -> dict:
    with open(part, encoding="utf-8") as f:
        return json.loads(f.readline())


@dataclass
class Joined:
    records: int  # scored records written to the output
    errors: int  # error records written to the errors file
    duplicates: int  # records whose id an earlier record of the job already had
    examples: list  # up to three of the duplicated ids


def join_parts(work: Path, n_chunks: int, output: Path, out_fmt: str, errors_path: Path) -> Joined:
    """Join parts 0..n-1 into the output and the errors file, each written aside and renamed: a
    kill here leaves the parts, and the rerun joins them again."""
    from .job import BatchError

    missing = [k for k in range(n_chunks) if not part_path(work, k).exists()]
    if missing:
        raise BatchError(f"chunks {missing[:5]} of {work} are missing; rerun to score them")
    headers = committed(work)
    int_ids = all(headers[k]["int_ids"] for k in range(n_chunks))
    counts = [0, 0]
    tmp_errors = errors_path.with_name(f".{errors_path.name}.tmp-{os.getpid()}")
    sink_class = SINKS[out_fmt]

    def write(out):
        with open(tmp_errors, "w", encoding="utf-8") as err:
            sink = sink_class(out, int_ids)
            for k in range(n_chunks):
                with open(part_path(work, k), encoding="utf-8") as f:
                    header = json.loads(f.readline())
                    lines = f.read().split("\n")[:-1]  # not splitlines(): results may hold U+2028
                sink.write(lines[: header["ok"]])
                err.write("".join(line + "\n" for line in lines[header["ok"]:]))
                counts[0] += header["ok"]
                counts[1] += header["errors"]
            sink.close()
            err.flush()
            os.fsync(err.fileno())
        os.replace(tmp_errors, errors_path)

    duplicates, examples = count_duplicates(lambda: (_header(part_path(work, k))["ids"] for k in range(n_chunks)))
    atomic_write(output, write, mode="wb" if sink_class.binary else "w")
    return Joined(counts[0], counts[1], duplicates, examples)


def count_duplicates(id_lists: Callable[[], Iterable[list]]) -> tuple[int, list]:
    """(records whose id an earlier one had, up to three such ids), over the id lists `id_lists()`
    yields (called once, and again only when a hash repeats). Ids compare as JSON values (4 and
    "4" differ). 8-byte hashes keep memory at 8 bytes a record; the few ids whose hashes repeat are
    then compared exactly, so a hash collision is never reported as a duplicate."""
    hashes = array("q", (hash(_key(i)) for ids in id_lists() for i in ids))
    if len(hashes) < 2:
        return 0, []
    import numpy as np

    flat = np.sort(np.frombuffer(hashes, dtype=np.int64))
    repeated = set(flat[1:][flat[1:] == flat[:-1]].tolist())
    if not repeated:
        return 0, []
    seen = Counter(key for ids in id_lists() for key in map(_key, ids) if hash(key) in repeated)
    dups = [(key, n) for key, n in seen.items() if n > 1]
    return sum(n - 1 for _, n in dups), [json.loads(key) for key, _ in dups[:3]]


def _key(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
