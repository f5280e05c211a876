"""Readers: files in the formats people have -> plain records the collators turn into features.

Records are dicts, one shape per task:
  text-classification   {"text": str, "label": str} (+ "text_pair")
  token-classification  {"tokens": [str], "tags": [str]}
  question-answering    {"id", "question", "context", "answers": [{"text", "answer_start"}], "is_impossible"}
Formats: `text;label` lines (the emotion set), CoNLL columns, official SQuAD JSON, JSONL/CSV with a
column mapping, and Hugging Face datasets (optional `datasets` extra, needs the network or its cache).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Iterable

FORMATS = ("auto", "text-label", "conll", "squad", "jsonl", "csv", "hf")
# The fields each task's records carry; a column mapping renames source columns onto them.
FIELDS = {
    "text-classification": ("text", "label", "text_pair"),
    "token-classification": ("tokens", "tags"),
    "question-answering": ("id", "question", "context", "answers"),
}


class DataError(ValueError):
    """A data file that cannot be read as the task needs it (names the file and the line)."""


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def parse_range(spec: str | None) -> slice | None:
    """'a:b' (python slice syntax, either side optional) -> slice; None or '' -> None."""
    if spec is None or str(spec).strip() in ("", ":"):
        return None
    text = str(spec).strip()
    if ":" not in text:
        raise DataError(f"range {spec!r} must look like 'start:stop' (e.g. '0:12', ':1000')")
    a, b = text.split(":", 1)
    try:
        return slice(int(a) if a.strip() else None, int(b) if b.strip() else None)
    except ValueError:
        raise DataError(f"range {spec!r} must look like 'start:stop' with integers") from None


# ---------------------------------------------------------------------- the real formats
def read_text_label(path: str | Path, separator: str = ";") -> list[dict]:
    """`text;label` per line (the emotion set); the label is after the last separator, blank lines skipped."""
    path = Path(path)
    records = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            text, sep, label = line.rpartition(separator)
            if not sep or not text.strip() or not label.strip():
                raise DataError(f"{path}:{n}: expected 'text{separator}label', got {line[:80]!r}")
            records.append({"text": text, "label": label.strip()})
    return records


def read_conll(path: str | Path, tag_column: int = -1) -> list[dict]:
    """CoNLL columns (`word POS chunk NER`), one token per line, blank line between sentences.
    `-DOCSTART-` lines are skipped; the tags are taken from `tag_column` (default the last)."""
    path = Path(path)
    records: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if tokens:
                    records.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{n}: expected 'word ... tag' columns, got {line.strip()!r}")
            tokens.append(parts[0])
            tags.append(parts[tag_column])
    if tokens:
        records.append({"tokens": tokens, "tags": tags})
    return records


def read_squad(path: str | Path, articles: slice | None = None) -> list[dict]:
    """Official SQuAD JSON (v1.1 or v2.0). `articles` selects whole articles (a split by article
    keeps questions about one text on one side)."""
    path = Path(path)
    with _open_text(path) as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise DataError(f"{path}: not a SQuAD file (no top-level 'data' list)")
    data = dataset["data"][articles] if articles is not None else dataset["data"]
    records = []
    for article in data:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answers = [{"text": a["text"], "answer_start": int(a["answer_start"])} for a in qa.get("answers", [])]
                records.append({
                    "id": qa["id"], "question": qa["question"], "context": context, "answers": answers,
                    "is_impossible": bool(qa.get("is_impossible", not answers)),
                })
    return records


# ---------------------------------------------------------------------- generic formats
def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON: {e}") from None
    return rows


def read_csv(path: str | Path) -> list[dict]:
    path = Path(path)
    delimiter = "\t" if path.name.endswith((".tsv", ".tsv.gz")) else ","
    with _open_text(path) as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def read_hf(name: str, split: str, config: str | None = None) -> list[dict]:
    """A Hugging Face dataset split as rows (needs `pip install datasets` and the network or its cache)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"format 'hf' reads {name!r} through the `datasets` library, which is not installed: "
            "pip install datasets (or download the files and use jsonl/csv)") from None
    return [dict(row) for row in datasets.load_dataset(name, config, split=split)]


def map_columns(rows: Iterable[dict], task: str, columns: dict[str, str] | None,
                label_names: list[str] | None = None) -> list[dict]:
    """Rename source columns onto the task's fields (`columns` = {field: source column}) and
    normalise values: integer class ids become label names when `label_names` is known, token
    lists may be space-separated strings, SQuAD answers may be columnar ({"text": [...], ...})."""
    columns = dict(columns or {})
    fields = FIELDS[task]
    unknown = set(columns) - set(fields)
    if unknown:
        raise DataError(f"column mapping names unknown fields {sorted(unknown)}; {task} records have {list(fields)}")
    out = []
    for i, row in enumerate(rows):
        rec: dict[str, Any] = {}
        for name in fields:
            source = columns.get(name, name)
            if source in row:
                rec[name] = row[source]
        required = [f for f in fields if f not in ("text_pair", "id")]
        missing = [columns.get(f, f) for f in required if f not in rec]
        if missing:
            raise DataError(f"row {i} has no column {', '.join(map(repr, missing))} (columns: {sorted(row)}); "
                            "map them with columns={field: column}")
        out.append(_normalise(rec, task, label_names, i))
    return out


def _normalise(rec: dict, task: str, label_names: list[str] | None, i: int) -> dict:
    if task == "text-classification":
        label = rec["label"]
        if isinstance(label, bool):
            label = int(label)
        if isinstance(label, int) and label_names:
            label = label_names[label]
        rec["label"] = str(label)
        if rec.get("text_pair") is None:
            rec.pop("text_pair", None)
    elif task == "token-classification":
        for key in ("tokens", "tags"):
            if isinstance(rec[key], str):
                rec[key] = rec[key].split()
        rec["tags"] = [label_names[t] if isinstance(t, int) and label_names else str(t) for t in rec["tags"]]
        if len(rec["tokens"]) != len(rec["tags"]):
            raise DataError(f"row {i}: {len(rec['tokens'])} tokens but {len(rec['tags'])} tags")
    else:
        answers = rec["answers"]
        if isinstance(answers, str):
            answers = json.loads(answers)
        if isinstance(answers, dict):  # datasets' columnar form
            answers = [{"text": t, "answer_start": s} for t, s in zip(answers.get("text", []), answers.get("answer_start", []))]
        rec["answers"] = [{"text": a["text"], "answer_start": int(a["answer_start"])} for a in answers]
        rec.setdefault("id", str(i))
        rec["id"] = str(rec["id"])
        rec["is_impossible"] = not rec["answers"]
    return rec


# ---------------------------------------------------------------------- one entry point
def detect_format(path: str | Path, task: str) -> str:
    name = str(path).lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith(".json"):
        return "squad" if task == "question-answering" else "jsonl"
    if task == "token-classification":
        return "conll"
    if task == "text-classification":
        return "text-label"
    raise DataError(f"cannot tell the format of {path} for {task}; set format to one of {', '.join(FORMATS[1:])}")


def read_records(task: str, path: str | Path, format: str = "auto", columns: dict[str, str] | None = None,
                 select: str | None = None, label_names: list[str] | None = None,
                 hf_config: str | None = None) -> list[dict]:
    """Records of `task` from `path` (or, with format 'hf', `path` = 'dataset_name:split').
    `select` ('a:b') keeps a range of units: articles for SQuAD JSON, records otherwise."""
    if task not in FIELDS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(FIELDS)}")
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    part = parse_range(select)
    if format == "hf":
        name, _, split = str(path).rpartition(":")
        if not name:
            raise DataError(f"format 'hf' takes 'dataset_name:split', got {path!r}")
        records = map_columns(read_hf(name, split, hf_config), task, columns, label_names)
        return records[part] if part else records
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    if format == "auto":
        format = detect_format(path, task)
    if format == "squad":
        if task != "question-answering":
            raise DataError(f"{path}: SQuAD JSON holds question-answering data, not {task}")
        return read_squad(path, part)
    if format == "text-label":
        records = read_text_label(path)
    elif format == "conll":
        records = read_conll(path)
    elif format == "jsonl":
        records = map_columns(read_jsonl(path), task, columns, label_names)
    else:
        records = map_columns(read_csv(path), task, columns, label_names)
    return records[part] if part else records


def read_texts(path: str | Path, column: str = "text", select: str | None = None) -> list[str]:
    """Plain texts (fill-mask evaluation): a column of JSONL/CSV (gzipped or not), or lines of a .txt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".csv", ".tsv")):
        rows = read_jsonl(path) if name.endswith((".jsonl", ".json")) else read_csv(path)
        if rows and column not in rows[0]:
            raise DataError(f"{path}: no column {column!r} (columns: {sorted(rows[0])}); pass columns text=NAME")
        texts = [str(r[column]) for r in rows]
    else:
        with _open_text(path) as f:
            texts = [line.rstrip("\r\n") for line in f if line.strip()]
    part = parse_range(select)
    return texts[part] if part else texts
