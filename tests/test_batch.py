"""The batch job: formats, column mapping, globs, bad records, kill-and-resume, job changes, Ray."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import CORPUS
from distilkit import batch
from distilkit.batch import sources as rio
from distilkit.batch import BatchError, main, run_batch, work_dir
from distilkit.pipelines import pipeline

QUESTIONS = ["Who is the CEO?", "Where does John live?", "What is the capital of France?", "Who is sitting?",
             "What is a good example of a question answering dataset?"]


def qa_records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"q{i}", "question": QUESTIONS[i % len(QUESTIONS)], "context": CORPUS[(i * 7) % len(CORPUS)]}
            for i in range(start, start + n)]


def write_jsonl(path: Path, records, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def assert_same(a, b, tol=1e-5):
    """Equal structures; floats within `tol` (batch composition changes the padding, not the answer)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (a, b)
        for k in a:
            assert_same(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_same(x, y, tol)
    else:
        assert a == b


@pytest.fixture(scope="module")
def qa_model(checkpoint):
    return checkpoint("distilbert", "question-answering", head_scale=20.0)


@pytest.fixture(scope="module")
def cls_model(checkpoint):
    return checkpoint("distilbert", "sequence-classification", head_scale=20.0)


@pytest.fixture(scope="module")
def qa_task(qa_model):
    return pipeline("question-answering", model=qa_model)


def run(tmp_path, **kw):
    kw.setdefault("progress", "none")
    return run_batch(**kw)


# ------------------------------------------------------------------------------ formats
def test_jsonl_qa_matches_task_run(tmp_path, qa_model, qa_task):
    records = qa_records(30)
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    report = run(tmp_path, input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=8,
                 params={"top_k": 2})
    assert (report.records, report.errors, report.chunks, report.chunks_resumed) == (30, 0, 4, 0)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    expected = qa_task.run([{"question": r["question"], "context": r["context"]} for r in records], top_k=2)
    assert_same([r["result"] for r in rows], expected)
    assert report.errors_path.read_text() == ""
    # Only the manifest stays beside the output once the job is complete.
    assert sorted(p.name for p in work_dir(out).iterdir()) == ["lock", "manifest.json"]


def test_csv_with_column_mapping(tmp_path, cls_model):
    texts = [c for c in CORPUS if "," not in c][:6] + ['She said "wow",\nthen left.']  # quoting, a newline
    src = tmp_path / "reviews.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rid", "stars", "review"])
        for i, t in enumerate(texts):
            w.writerow([f"r-{i}", i, t])
    out = tmp_path / "scores.csv"
    report = run(tmp_path, input=str(src), output=str(out), task="text-classification", model=str(cls_model),
                 text_column="review", id_column="rid", params={"top_k": None}, chunk_size=3)
    assert report.records == len(texts)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"r-{i}" for i in range(len(texts))]
    expected = pipeline("text-classification", model=cls_model).run(texts, top_k=None, legacy=False)
    assert_same([json.loads(r["result"]) for r in rows], expected)
    assert len(json.loads(rows[0]["result"])) == 3  # top_k=None: every label, sorted


def test_text_pairs(tmp_path, cls_model):
    records = [{"a": CORPUS[i], "b": CORPUS[i + 1]} for i in range(5)]
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    out = tmp_path / "pairs.out.jsonl"
    run(tmp_path, input=str(src), output=str(out), task="text-classification", model=str(cls_model),
        text_column="a", text_pair_column="b")
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == list(range(5))  # no id field: the position
    expected = pipeline("text-classification", model=cls_model).run(
        [{"text": r["a"], "text_pair": r["b"]} for r in records])
    assert_same([r["result"] for r in rows], expected)


def test_parquet_in_and_out(tmp_path, qa_model, qa_task):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    records = qa_records(20)
    table = pa.table({"qid": list(range(100, 120)), "q": [r["question"] for r in records],
                      "ctx": [r["context"] for r in records], "unused": [1.5] * 20})
    src = tmp_path / "in.parquet"
    pq.write_table(table, src, row_group_size=6)  # chunks cross row groups
    out = tmp_path / "out.parquet"
    report = run(tmp_path, input=str(src), output=str(out), task="question-answering", model=str(qa_model),
                 question_column="q", context_column="ctx", id_column="qid", chunk_size=7)
    assert report.records == 20
    result = pq.read_table(out)
    assert result.schema.field("id").type == pa.int64()
    assert result.column("id").to_pylist() == list(range(100, 120))
    expected = qa_task.run([{"question": r["question"], "context": r["context"]} for r in records])
    assert_same([json.loads(x) for x in result.column("result").to_pylist()], expected)


def test_glob_of_several_files_and_formats(tmp_path, qa_model, qa_task):
    records = qa_records(23)
    for k, (a, b) in enumerate([(0, 5), (5, 14), (14, 18)]):  # sorted by name: shard-0, shard-1, shard-2
        write_jsonl(tmp_path / f"shard-{k}.jsonl", [{k2: v for k2, v in r.items() if k2 != "id"}
                                                     for r in records[a:b]])
    write_jsonl(tmp_path / "more.jsonl.gz", [{"question": r["question"], "context": r["context"]}
                                             for r in records[18:21]], opener=gzip.open)
    with open(tmp_path / "last.tsv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["question", "context"])
        w.writerows([r["question"], r["context"]] for r in records[21:])
    out = tmp_path / "out" / "all.jsonl"
    out.parent.mkdir()
    report = run(tmp_path, input=[str(tmp_path / "shard-*.jsonl"), str(tmp_path / "more.jsonl.gz"),
                                  str(tmp_path / "last.tsv")], output=str(out), task="qa", model=str(qa_model),
                 chunk_size=4)
    assert (report.records, report.chunks) == (23, 6)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == list(range(23))  # positions run on across files
    expected = qa_task.run([{"question": r["question"], "context": r["context"]} for r in records])
    assert_same([r["result"] for r in rows], expected)


def test_output_is_left_out_of_its_own_glob(tmp_path, qa_model):
    write_jsonl(tmp_path / "a.jsonl", qa_records(3))
    out = tmp_path / "z.jsonl"
    run(tmp_path, input=str(tmp_path / "*.jsonl"), output=str(out), task="qa", model=str(qa_model), chunk_size=2)
    # The rerun's glob now matches z.jsonl and z.errors.jsonl too; it is still the same job.
    report = run(tmp_path, input=str(tmp_path / "*.jsonl"), output=str(out), task="qa", model=str(qa_model),
                 chunk_size=2)
    assert report.records == 3 and report.chunks_resumed == report.chunks


def test_chunks_read_alone_match_the_stream(tmp_path):
    """The Ray engine reads each chunk from its address: the same records as the stream, every format."""
    write_jsonl(tmp_path / "a.jsonl", ["", *[json.dumps({"text": f"t{i}"}) for i in range(7)], "  ", "{bad"])
    write_jsonl(tmp_path / "b.jsonl.gz", [json.dumps({"text": f"g{i}"}) for i in range(5)], opener=gzip.open)
    (tmp_path / "c.csv").write_bytes(
        "\ufefftext,id\n"
        'plain,1\n"multi\nline, with comma",2\n\n"say ""hi""",3\nshort\n'.encode() + b"bad \xff byte,4\nlast,5")
    sources = rio.expand_inputs([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl.gz"), str(tmp_path / "c.csv")])
    if _has_pyarrow():
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": [f"p{i}" for i in range(9)], "x": list(range(9))}),
                       tmp_path / "d.parquet", row_group_size=4)
        sources += rio.expand_inputs(str(tmp_path / "d.parquet"))
    columns = ["text", "id"]
    chunks = list(batch.iter_chunks(sources, 3, columns))
    decoded = []
    for chunk in chunks:
        alone = batch.read_segments(sources, json.loads(json.dumps(batch.chunk_segments(chunk))), columns)
        assert [(si, it.start, it.line) for si, it in alone] == [(si, it.start, it.line) for si, it in chunk.entries]
        for si, it in alone:
            header = rio.csv_header(sources[si]) if sources[si].format == "csv" else None
            decoded.append(rio.decode(sources[si], it, header))
    texts = [r["text"] if r else why for r, why in decoded]
    assert texts[:8] == [f"t{i}" for i in range(7)] + ["line 10 is not valid JSON (Expecting property name "
                                                       "enclosed in double quotes at column 2)"]
    assert texts[8:13] == [f"g{i}" for i in range(5)]
    assert texts[13:19] == ["plain", "multi\nline, with comma", 'say "hi"', "line 7 has 1 fields, the header has 2",
                            "line 8 is not valid UTF-8", "last"]
    assert decoded[13][0] == {"text": "plain", "id": "1"}  # the byte-order mark is not in the first name
    if _has_pyarrow():
        assert texts[19:] == [f"p{i}" for i in range(9)]
        assert decoded[19][0] == {"text": "p0"}  # only the mapped columns are read
    assert chunks[-1].fraction == 1.0 and all(0 < c.fraction <= 1 for c in chunks)


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("task, head", [("fill-mask", "masked-lm"), ("token-classification", "token-classification")])
def test_text_tasks(tmp_path, checkpoint, task, head):
    model = checkpoint("distilbert", head, head_scale=20.0)
    texts = [c for c in CORPUS if c.isascii()][:5]
    if task == "fill-mask":
        texts = [t.replace(t.split()[2], "[MASK]", 1) for t in texts]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts] + [{"text": "no mask here"}])
    out = tmp_path / "out.jsonl"
    report = run(tmp_path, input=str(src), output=str(out), task=task, model=str(model), chunk_size=4)
    expected = pipeline(task, model=model).run(texts)
    if task == "fill-mask":
        assert report.errors == 1 and "No mask_token" in read_jsonl(report.errors_path)[0]["error"]
    else:
        expected += pipeline(task, model=model).run(["no mask here"])
    assert_same([r["result"] for r in read_jsonl(out)], expected)


# ------------------------------------------------------------------------------ bad records
def test_bad_records_go_to_the_errors_file(tmp_path, qa_model, qa_task):
    good = qa_records(6)
    lines = [
        json.dumps(good[0]),
        json.dumps({"id": "no-q", "context": CORPUS[0]}),
        json.dumps(good[1]),
        json.dumps({"id": "empty", "question": "  ", "context": CORPUS[0]}),
        "{not json",
        json.dumps(good[2]),
        json.dumps({"id": "null-ctx", "question": "Who?", "context": None}),
        json.dumps({"id": 7, "question": 42, "context": CORPUS[1]}),
        "",  # blank lines are not records
        json.dumps(["a", "list"]),
        json.dumps(good[3]),
        json.dumps({"id": "long-q", "question": "word " * 200, "context": CORPUS[2]}),  # refused by the task
        json.dumps(good[4]),
        json.dumps(good[5]),
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes("\n".join(lines).encode() + b'\n{"id": "latin1", "question": "caf\xe9?", "context": "x"}\n')
    out = tmp_path / "out.jsonl"
    report = run(tmp_path, input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=5,
                 params={"max_question_len": 300, "max_seq_len": 100})
    assert (report.records, report.errors) == (6, 8)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [r["id"] for r in good]
    expected = qa_task.run([{"question": r["question"], "context": r["context"]} for r in good],
                           max_question_len=300, max_seq_len=100)
    assert_same([r["result"] for r in rows], expected)
    bad = read_jsonl(report.errors_path)
    # In input order, each with its position in a field of its own; a record that cannot be decoded
    # has no id (its position is not passed off as one: it could be another record's id).
    assert [(e["position"], e["id"]) for e in bad] == [
        (1, "no-q"), (3, "empty"), (4, None), (6, "null-ctx"), (7, 7), (8, None), (10, "long-q"), (13, None)]
    errors = {e["position"]: e for e in bad}
    assert errors[1]["error"] == "missing field 'question'" and errors[1]["field"] == "question"
    assert errors[3]["error"] == "field 'question' is empty"
    assert errors[4]["error"].startswith("line 5 is not valid JSON") and errors[4]["source"] == f"{src}:5"
    assert errors[6]["error"] == "field 'context' is null"
    assert errors[7]["error"] == "field 'question' must be a string, got int"
    assert errors[8]["error"] == "line 10 is a JSON list, not an object"
    assert "leaves no room for the context" in errors[10]["error"] and errors[10]["field"] == "question"
    assert errors[13]["error"].startswith("line 15 is not valid UTF-8")
    assert all(list(e) == ["id", "position", "error", "field", "source"] for e in bad)


def test_param_errors_fail_the_job_not_the_records(tmp_path, qa_model):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(3))
    with pytest.raises(batch.InputError, match="top_k"):
        run(tmp_path, input=str(src), output=str(tmp_path / "o.jsonl"), task="qa", model=str(qa_model),
            params={"top_k": 0})
    with pytest.raises(batch.InputError, match="max_seq_len"):  # only the task can tell: over the model's limit
        run(tmp_path, input=str(src), output=str(tmp_path / "o.jsonl"), task="qa", model=str(qa_model),
            params={"max_seq_len": 4096})


# ------------------------------------------------------------------------------ resume
KILLABLE = textwrap.dedent("""
    import sys, time
    import distilkit.tasks.base as base
    forward = base.Task.forward
    def slow(self, features):  # a slow model, so that the kill lands mid-run
        time.sleep(0.2)
        return forward(self, features)
    base.Task.forward = slow
    from distilkit.batch import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_and_resume_gives_every_record_exactly_once(tmp_path, qa_model, qa_task):
    records = qa_records(120)
    records[37] = {"id": "bad", "question": "", "context": "x"}
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = ["--input", str(src), "--output", str(out), "--task", "question-answering", "--model", str(qa_model),
            "--chunk-size", "4", "--progress", "none"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], env=env, stderr=subprocess.PIPE)
    parts = work_dir(out)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.jsonl"))) < 3:  # the journal shows finished chunks: kill now
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the job committed no chunk in time"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    committed = len(list(parts.glob("part-*.jsonl")))
    assert 3 <= committed < 30 and not out.exists()  # killed mid-run
    # A kill inside a write leaves a temporary file: the rerun must not trip on it.
    (parts / ".part-00000029.jsonl.tmp-99999").write_text('{"chunk": 29, "half a')

    report = run_batch(input=str(src), output=str(out), task="question-answering", model=str(qa_model),
                       chunk_size=4, progress="none")
    assert report.chunks_resumed == committed and report.chunks == 30
    rows = read_jsonl(out)
    good = [r for r in records if r["id"] != "bad"]
    assert [r["id"] for r in rows] == [r["id"] for r in good]  # each once, in input order
    assert [e["id"] for e in read_jsonl(report.errors_path)] == ["bad"]
    assert_same([r["result"] for r in rows],
                qa_task.run([{"question": r["question"], "context": r["context"]} for r in good]))


@pytest.mark.slow  # several process start-ups
def test_repeated_kills_at_random_moments(tmp_path, qa_model):
    import random

    rng = random.Random(0)
    records = qa_records(60)
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = ["--input", str(src), "--output", str(out), "--task", "qa", "--model", str(qa_model), "--chunk-size", "3",
            "--progress", "none"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    parts = work_dir(out)
    kills = 0
    while not out.exists() and kills < 8:
        # Kill once 0-3 more chunks are committed (0: during start-up), a random moment into the next one.
        target = len(list(parts.glob("part-*.jsonl"))) + rng.randint(0, 3)
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, *args], env=env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and len(list(parts.glob("part-*.jsonl"))) < target:
            assert time.monotonic() < deadline, "the job committed no chunk in time"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3
    report = run_batch(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=3,
                       progress="none")
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in records] and report.errors == 0


def test_kill_while_joining_the_parts(tmp_path, qa_model, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(9))
    out = tmp_path / "out.jsonl"
    kw = dict(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=2, progress="none")
    finalise = batch._finalise

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_finalise", killed)
    with pytest.raises(KeyboardInterrupt):
        run_batch(**kw)
    monkeypatch.setattr(batch, "_finalise", finalise)
    assert len(list(work_dir(out).glob("part-*.jsonl"))) == 5 and not out.exists()
    report = run_batch(**kw)
    assert report.chunks_resumed == 5 and [r["id"] for r in read_jsonl(out)] == [f"q{i}" for i in range(9)]


def test_changed_input_or_model_is_refused(tmp_path, qa_model, checkpoint):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(4))
    out = tmp_path / "out.jsonl"
    kw = dict(input=str(src), output=str(out), task="qa", model=str(qa_model), progress="none")
    run_batch(**kw)
    first = out.read_text()
    assert run_batch(**kw).chunks_resumed == 1 and out.read_text() == first  # same job: nothing to do

    write_jsonl(src, qa_records(5))
    with pytest.raises(BatchError, match="input .*in.jsonl changed.*--overwrite"):
        run_batch(**kw)
    assert out.read_text() == first
    other = checkpoint("distilbert", "question-answering", seed=1, head_scale=20.0)
    with pytest.raises(BatchError, match="model files changed"):
        run_batch(**dict(kw, model=str(other)))
    with pytest.raises(BatchError, match="params"):
        run_batch(**dict(kw, params={"top_k": 3}))

    assert run_batch(**dict(kw, overwrite=True)).records == 5
    assert len(read_jsonl(out)) == 5


def test_foreign_output_is_not_replaced(tmp_path, qa_model):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(2))
    out = tmp_path / "precious.jsonl"
    out.write_text("mine\n")
    with pytest.raises(BatchError, match="no batch job manifest"):
        run_batch(input=str(src), output=str(out), task="qa", model=str(qa_model), progress="none")
    assert out.read_text() == "mine\n"


# ------------------------------------------------------------------------------ CLI and progress
def test_cli_main(tmp_path, qa_model, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(6) + ['{"id": "x"}'])
    out = tmp_path / "out.jsonl"
    code = main(["--input", str(src), "--output", str(out), "--task", "question-answering", "--model", str(qa_model),
                 "--params", '{"top_k": 2}', "--chunk-size", "2", "--progress", "lines", "--progress-interval", "0.01"])
    assert code == 0
    err = capsys.readouterr().err
    assert " records/s | " in err and "ETA" in err and "errors=1" in err and "6 scored into" in err
    assert err.strip().splitlines()[-1].startswith("batch: done: 7 records in ")
    assert all(isinstance(r["result"], list) and len(r["result"]) == 2 for r in read_jsonl(out))

    assert main(["--input", str(src), "--output", str(tmp_path / "o2.jsonl"), "--task", "qa",
                 "--model", str(qa_model), "--params", '{"top_k": "two"}']) == 2
    assert "top_k" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "nothing-*.jsonl"), "--output", str(tmp_path / "o3.jsonl"),
                 "--task", "qa", "--model", str(qa_model)]) == 2
    assert "no input file matches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--input", str(src), "--output", "o.jsonl", "--task", "qa", "--params", "[1]"])


# ------------------------------------------------------------------------------ Ray
def _has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow  # a local Ray instance and two actors take ~30 s to start on 2 cores
@pytest.mark.skipif(not _has_ray(), reason="Ray Data is not installed (pip install 'distilkit[ray]')")
def test_ray_engine_matches_local(tmp_path, qa_model):
    records = qa_records(40)
    records[5] = {"id": "bad", "context": "no question"}
    src = write_jsonl(tmp_path / "in.jsonl", records)
    kw = dict(input=str(src), task="qa", model=str(qa_model), chunk_size=6, progress="none")
    local = run_batch(output=str(tmp_path / "local.jsonl"), **kw)
    remote = run_batch(output=str(tmp_path / "ray.jsonl"), engine="ray", ray_actors=2, **kw)
    assert (remote.records, remote.errors, remote.chunks) == (local.records, local.errors, local.chunks) == (39, 1, 7)
    a, b = read_jsonl(local.output), read_jsonl(remote.output)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert_same([r["result"] for r in a], [r["result"] for r in b], tol=1e-6)
    assert read_jsonl(local.errors_path) == read_jsonl(remote.errors_path)
