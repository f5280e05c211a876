"""The scorer: a chunk of raw records -> its part file, through the task's featurize/forward/decode.

Bad records (undecodable, a missing, null or empty field, an id that cannot be written, refused by
the task) become error records `{"id", "position", "error", "field", "source"}`: `position` is
the record's 0-based index across all inputs, in a field of its own so it never passes for an id.
Ids: `--id-column`, else a record's `id` field, else its position; an id field that is present
but null is an error, not a silent fall-back to the position.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..batching import plan
from ..errors import InputError
from . import sources as rio
from .parts import Chunk
from .sinks import is_int64


@dataclass(frozen=True)
class Columns:
    """Which input field feeds which part of the task's input."""

    text: str = "text"
    text_pair: str | None = None
    question: str = "question"
    context: str = "context"
    id: str | None = None  # None: the record's "id" if it has one, else its position
    query: str = "query"
    texts: str = "texts"  # a list of strings: the texts a text-ranking query ranks

    def for_task(self, task: str) -> dict[str, str]:
        """Task input key -> column, for the fields this task reads."""
        if task == "question-answering":
            return {"question": self.question, "context": self.context}
        if task == "text-classification" and self.text_pair:
            return {"text": self.text, "text_pair": self.text_pair}
        if task == "text-ranking":
            return {"query": self.query, "texts": self.texts}
        return {"text": self.text}

    def needed(self, task: str) -> list[str]:
        return [*self.for_task(task).values(), self.id or "id"]


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
            rid, field = None, None
            if record is not None:
                rid, x, why, field = self.to_input(record, position)
            if why is not None:
                errors.append((position, _error(rid, position, why, field, source)))
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
                        position, source = positions[i]
                        errors.append((position, _error(ids[i], position, reason, field, source)))
                        continue
                    features += f
                    owners += [len(keep)] * len(f)
                    keep.append(i)
                ids, inputs = [ids[i] for i in keep], [inputs[i] for i in keep]
        errors.sort(key=lambda e: e[0])
        return Prepared(chunk.index, chunk.first, len(chunk.entries), ids, inputs, features, owners, errors,
                        chunk.fraction)

    def to_input(self, record: dict, position: int):
        """(id, task input, None, None) or (id or None, None, why, field)."""
        rid, why, field = self.record_id(record, position)
        if why is not None:
            return None, None, why, field
        values = {}
        for key, column in self.fields.items():
            value = record.get(column)
            if value is None:
                why = f"missing field {column!r}" if column not in record else f"field {column!r} is null"
                return rid, None, why, column
            if key == "texts":  # text-ranking: a list of texts; the task checks each one
                if not isinstance(value, list) or not value:
                    return rid, None, f"field {column!r} must be a non-empty list of strings", column
            elif not isinstance(value, str):
                return rid, None, f"field {column!r} must be a string, got {type(value).__name__}", column
            elif not value.strip():
                return rid, None, f"field {column!r} is empty", column
            values[key] = value
        x = values if len(values) > 1 else values["text"]
        return rid, x, None, None

    def record_id(self, record: dict, position: int) -> tuple[Any, str | None, str | None]:
        """(id, None, None) or (None, why, field)."""
        column = self.columns.id or "id"
        if column not in record:
            if self.columns.id is not None:
                return None, f"missing id field {column!r}", column
            return position, None, None
        rid = record[column]
        if rid is None:  # falling back to the position would mix two kinds of id in one output
            return None, f"id field {column!r} is null", column
        if isinstance(rid, float) and not math.isfinite(rid):
            return None, f"id field {column!r} is {rid}, which JSON cannot hold", column
        return rid, None, None

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

    def forward(self, prepared: Prepared, done: Callable[[Prepared, float], None] | None = None):
        """Model outputs per feature. With `done`, the chunk's planned batches run one at a time and
        `done(prepared, share of its features finished)` follows each, so progress moves inside a
        chunk; the batches are the ones `task.forward` plans, so the outputs are the same."""
        features = prepared.features
        if done is None or not features:
            return self.task.forward(features)
        outputs: list[Any] = [None] * len(features)
        finished = 0
        for group in plan([len(f.input_ids) for f in features], self.task.max_tokens, self.task.max_batch):
            for i, out in zip(group, self.task.forward([features[i] for i in group])):
                outputs[i] = out
            finished += len(group)
            done(prepared, finished / len(features))
        return outputs

    def finish(self, prepared: Prepared, outputs) -> tuple[dict, str]:
        """(header, part text): a header line, then one line per scored record, then the errors."""
        results = self.task.decode(prepared.inputs, prepared.features, prepared.owners, outputs, self.p) \
            if prepared.inputs else []
        lines = [dumps({"id": i, "result": r}) for i, r in zip(prepared.ids, results)]
        lines += [dumps(e) for _, e in prepared.errors]
        header = {"chunk": prepared.index, "first": prepared.first, "count": prepared.count, "ok": len(results),
                  "errors": len(prepared.errors), "int_ids": all(is_int64(i) for i in prepared.ids),
                  # every id the chunk wrote, for the duplicate count at the join
                  "ids": [*prepared.ids, *(e["id"] for _, e in prepared.errors if e["id"] is not None)]}
        return header, "".join(line + "\n" for line in [dumps(header), *lines])

    def score(self, chunk: Chunk) -> tuple[dict, str]:
        prepared = self.prepare(chunk)
        return self.finish(prepared, self.forward(prepared))


def _error(rid: Any, position: int, why: str, field: str | None, source: str) -> dict:
    return {"id": rid, "position": position, "error": why, "field": field, "source": source}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)


def _json_default(x: Any):
    if hasattr(x, "tolist"):  # numpy scalars and arrays (embeddings)
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)  # dates and the like, from Parquet ids


def build_scorer(spec: dict) -> Scorer:
    from ..pipelines import pipeline

    task = pipeline(spec["task"], model=spec["model"], mode=spec["mode"], device=spec["device"],
                    threads=spec["threads"], max_tokens=spec["max_tokens"])
    sources = [rio.Source(Path(p), fmt, gz) for p, fmt, gz in spec["sources"]]
    return Scorer(task, spec["params"], Columns(**spec["columns"]), sources)
