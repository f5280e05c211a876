"""Batch jobs of the new tasks: embeddings to Parquet (a fixed-size list of float32), JSONL and
.npy, resumed after an interruption like every job; zero-shot and rerank jobs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distilkit import pipeline
from distilkit.batch import BatchError, run_batch
from distilkit.tasks.base import Task

from conftest import CORPUS
from test_embeddings import st_folder

pa = pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory):
    return st_folder(tmp_path_factory.mktemp("st"), checkpoint("bert", None), max_seq_length=16)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def records():
    rows = [{"id": i, "text": t} for i, t in enumerate(CORPUS)]
    rows[3] = {"id": 3, "text": ""}  # a bad record: left out, reported
    return rows


def test_embeddings_to_parquet_jsonl_npy(folder, tmp_path, one_thread):
    import pyarrow.parquet as pq

    src = write_jsonl(tmp_path / "in.jsonl", records())
    good = [r for r in records() if r["text"]]
    expected = pipeline("sentence-embedding", model=folder).encode([r["text"] for r in good])
    for name in ("out.parquet", "out.jsonl", "out.npy"):
        report = run_batch(input=str(src), output=str(tmp_path / name), task="text-embedding", model=str(folder),
                           chunk_size=4, progress="none")
        assert report.records == len(good) and report.errors == 1
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("result").type == pa.list_(pa.float32(), 32)  # fixed-size float32
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [r["id"] for r in good]
    np.testing.assert_allclose(np.asarray(table.column("result").to_pylist(), dtype=np.float32), expected, atol=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([r["result"] for r in rows], expected, atol=1e-6)
    arr = np.load(tmp_path / "out.npy")
    assert arr["id"].tolist() == [r["id"] for r in good] and arr["embedding"].dtype == np.float32
    np.testing.assert_array_equal(arr["embedding"], np.asarray(table.column("result").to_pylist(), dtype=np.float32))


def test_text_ids_in_npy_and_npy_refused_for_other_tasks(folder, tmp_path, classifier):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"doc-{i}", "text": t} for i, t in enumerate(CORPUS[:3])])
    run_batch(input=str(src), output=str(tmp_path / "o.npy"), task="sentence-embedding", model=str(folder),
              progress="none")
    assert np.load(tmp_path / "o.npy")["id"].tolist() == ["doc-0", "doc-1", "doc-2"]
    with pytest.raises(BatchError, match="npy"):
        run_batch(input=str(src), output=str(tmp_path / "z.npy"), task="zero-shot-classification",
                  model=str(classifier("distilbert", {0: "contradiction", 1: "entailment"})),
                  params={"candidate_labels": ["a", "b"]}, progress="none")


def test_interrupted_embedding_job_resumes(folder, tmp_path, monkeypatch, one_thread):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(CORPUS * 2)])
    out = tmp_path / "out.parquet"
    forward, calls = Task.forward, []

    def interrupted(self, features, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("test")
        return forward(self, features, *args, **kwargs)

    monkeypatch.setattr(Task, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch(input=str(src), output=str(out), task="sentence-embedding", model=str(folder), chunk_size=4,
                  progress="none")
    monkeypatch.setattr(Task, "forward", forward)
    report = run_batch(input=str(src), output=str(out), task="sentence-embedding", model=str(folder), chunk_size=4,
                       progress="none")
    assert report.chunks_resumed >= 1 and report.records == len(CORPUS) * 2
    import pyarrow.parquet as pq

    got = np.asarray(pq.read_table(out).column("result").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got, pipeline("sentence-embedding", model=folder).encode(CORPUS * 2), atol=1e-6)


def test_zero_shot_and_rerank_jobs(classifier, tmp_path, one_thread):
    nli = classifier("distilbert", {0: "contradiction", 1: "neutral", 2: "entailment"})
    src = write_jsonl(tmp_path / "in.jsonl", records())
    labels = ["travel", "food"]
    report = run_batch(input=str(src), output=str(tmp_path / "zs.jsonl"), task="zero-shot-classification",
                       model=str(nli), params={"candidate_labels": labels}, progress="none")
    assert report.errors == 1
    rows = [json.loads(line) for line in (tmp_path / "zs.jsonl").read_text().splitlines()]
    assert [r["result"] for r in rows] == pipeline("zero-shot-classification", model=nli)(
        [r["text"] for r in records() if r["text"]], labels)

    ce = classifier("bert", {0: "LABEL_0"}, seed=2, head_scale=30.0)
    queries = [{"id": "q1", "q": "Where does John live?", "docs": CORPUS[:4]},
               {"id": "q2", "q": "Which city?", "docs": ["Paris", ""]},  # a bad text: the record is refused
               {"id": "q3", "q": "Who sits?", "docs": "not a list"}]
    src = write_jsonl(tmp_path / "q.jsonl", queries)
    report = run_batch(input=str(src), output=str(tmp_path / "rank.parquet"), task="text-ranking", model=str(ce),
                       query_column="q", texts_column="docs", params={"top_k": 2}, progress="none")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "rank.parquet")
    assert table.column("id").to_pylist() == ["q1"] and report.errors == 2
    assert json.loads(table.column("result")[0].as_py()) == pipeline("text-ranking", model=ce)(
        queries[0]["q"], queries[0]["docs"], top_k=2)
    errors = {e["id"]: e for e in map(json.loads, report.errors_path.read_text().splitlines())}
    assert errors["q3"]["field"] == "docs" and "texts[1]" in errors["q2"]["field"]
