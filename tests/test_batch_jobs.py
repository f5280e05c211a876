"""The batch job as a user watches it: progress inside a chunk, ids that cannot round-trip,
duplicate ids, byte-order marks, SIGTERM, the lock, a kill during the final join."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from distilkit.batch import BatchError, run_batch, work_dir
from test_batch import KILLABLE, qa_records, read_jsonl, write_jsonl

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def qa_model(checkpoint):
    return checkpoint("distilbert", "question-answering", head_scale=20.0)


def quiet(**kw):
    kw.setdefault("progress", "none")
    return run_batch(**kw)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", KILLABLE, *args]


class Lines:
    """A child's stderr read line by line as it comes, each line with the part files seen then."""

    def __init__(self, proc: subprocess.Popen, parts: Path):
        self.seen: list[tuple[str, int]] = []
        self.thread = threading.Thread(target=self._read, args=(proc, parts), daemon=True)
        self.thread.start()

    def _read(self, proc, parts):
        for raw in proc.stderr:
            self.seen.append((raw.decode(), len(list(parts.glob("part-*.jsonl")))))


def wait_until(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout  # only so that a hang fails; nothing is timed
    while not predicate():
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------------------ progress
def test_progress_counts_records_inside_the_first_chunk(tmp_path, qa_model):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(24))
    out = tmp_path / "out.jsonl"
    parts = work_dir(out)
    # One chunk of 24 records in batches of about one record (64 tokens), each forward slowed down:
    # the chunk commits after ~24 forward calls. stderr is a pipe: plain lines, auto-detected.
    proc = subprocess.Popen(cli("--input", str(src), "--output", str(out), "--task", "qa", "--model", str(qa_model),
                                "--chunk-size", "24", "--max-tokens", "64", "--progress-interval", "0.2"),
                            env=ENV, stderr=subprocess.PIPE)
    lines = Lines(proc, parts)
    counted = re.compile(r"^batch: (\d+)/?\d* records \| ")

    def moved():
        return any((m := counted.match(text)) and int(m.group(1)) > 0 for text, _ in lines.seen)

    wait_until(moved, proc, "progress line with records counted")
    first = next(i for i, (text, _) in enumerate(lines.seen) if (m := counted.match(text)) and int(m.group(1)) > 0)
    assert lines.seen[first][1] == 0  # counted while the chunk was in the model, before any commit
    assert proc.wait(timeout=300) == 0
    lines.thread.join(timeout=10)
    text = "".join(t for t, _ in lines.seen)
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines()[-1].startswith("batch: done: 24 records in ") and "records/s" in text.splitlines()[-1]
    assert len(read_jsonl(out)) == 24


def test_a_join_only_rerun_reports_no_rate_and_a_stop_says_what_is_kept(tmp_path, qa_model, monkeypatch, capsys):
    from distilkit import batch

    src = write_jsonl(tmp_path / "in.jsonl", qa_records(5))
    out = tmp_path / "out.jsonl"
    kw = dict(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=2, progress="lines")

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_finalise", killed)
    with pytest.raises(KeyboardInterrupt):
        run_batch(**kw)
    err = capsys.readouterr().err
    assert f"stopped (SIGINT): 3 of 3 chunks committed (5 records) in {work_dir(out)}; rerun the same command" in err
    monkeypatch.undo()
    report = run_batch(**kw)
    assert report.chunks_resumed == 3 and len(read_jsonl(out)) == 5
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("batch: done: 0 records in ") and ", 5 resumed" in summary
    assert "/s" not in summary and "5 scored into" in summary


# ------------------------------------------------------------------------------ ids
def test_ids_beyond_int64_are_text_in_typed_outputs_and_numbers_in_jsonl(tmp_path, qa_model):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    records = qa_records(4)
    big = [2**63, -(2**63) - 1, 2**70, 5]
    for r, i in zip(records, big):
        r["id"] = i
    src = write_jsonl(tmp_path / "in.jsonl", records)
    report = quiet(input=str(src), output=str(tmp_path / "out.parquet"), task="qa", model=str(qa_model),
                   chunk_size=2)
    assert (report.records, report.errors) == (4, 0)  # the job finishes: no OverflowError at the join
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("id").type == pa.string()
    assert table.column("id").to_pylist() == [str(i) for i in big]
    quiet(input=str(src), output=str(tmp_path / "out.jsonl"), task="qa", model=str(qa_model))
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == big


def test_a_null_id_is_an_error_record_not_its_position(tmp_path, qa_model):
    records = qa_records(3)
    records[1]["id"] = None
    records[2]["id"] = float("nan")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))  # json writes NaN, as some tools do
    report = quiet(input=str(src), output=str(tmp_path / "out.jsonl"), task="qa", model=str(qa_model))
    assert (report.records, report.errors) == (1, 2)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["q0"]
    bad = read_jsonl(report.errors_path)
    assert [(e["id"], e["position"], e["field"]) for e in bad] == [(None, 1, "id"), (None, 2, "id")]
    assert bad[0]["error"] == "id field 'id' is null" and "JSON cannot hold" in bad[1]["error"]


def test_duplicate_ids_are_counted_and_all_kept(tmp_path, qa_model, capsys):
    records = qa_records(7)
    records[3]["id"] = "q0"
    records[5]["id"] = "q0"
    records[6]["id"] = 4  # a JSON number: not the string "q4", nor a duplicate of anything
    records[4] = {"id": "q1", "question": "", "context": "x"}  # an error record repeats an id too
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    report = run_batch(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=2,
                       progress="lines")
    assert (report.records, report.errors, report.duplicates) == (6, 1, 3)
    assert [r["id"] for r in read_jsonl(out)] == ["q0", "q1", "q2", "q0", "q0", 4]
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "3 records repeat an earlier id (e.g. 'q0', 'q1'), all kept" in summary
    assert quiet(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=2).duplicates == 3


# ------------------------------------------------------------------------------ byte-order marks
@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz", "in.csv", "in.tsv"])
def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path, qa_model, name):
    records = qa_records(3)
    path = tmp_path / name
    if ".jsonl" in name:
        text = "\ufeff" + "".join(json.dumps(r) + "\n" for r in records)
    else:
        rows = [["id", "question", "context"], *([r["id"], r["question"], r["context"]] for r in records)]
        with open(tmp_path / "rows", "w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter="\t" if name.endswith(".tsv") else ",").writerows(rows)
        text = "\ufeff" + (tmp_path / "rows").read_text(encoding="utf-8")
    with (gzip.open(path, "wt", encoding="utf-8") if name.endswith(".gz") else open(path, "w", encoding="utf-8")) as f:
        f.write(text)
    report = quiet(input=str(path), output=str(tmp_path / "out.jsonl"), task="qa", model=str(qa_model))
    assert (report.records, report.errors) == (3, 0)
    assert [r["id"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["q0", "q1", "q2"]


# ------------------------------------------------------------------------------ changed model
def test_a_changed_model_names_the_file(tmp_path, qa_model):
    model = tmp_path / "model"
    shutil.copytree(qa_model, model)
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(2))
    kw = dict(input=str(src), output=str(tmp_path / "out.jsonl"), task="qa", model=str(model))
    quiet(**kw)
    with open(model / "config.json", "a") as f:
        f.write("\n")
    with pytest.raises(BatchError, match=r"model files changed \(config.json changed\)"):
        quiet(**kw)


# ------------------------------------------------------------------------------ signals, lock, join
def test_sigterm_says_where_it_stopped_and_the_rerun_finishes(tmp_path, qa_model):
    records = qa_records(40)
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = ["--input", str(src), "--output", str(out), "--task", "qa", "--model", str(qa_model), "--chunk-size", "4"]
    proc = subprocess.Popen(cli(*args), env=ENV, stderr=subprocess.PIPE)
    parts = work_dir(out)
    wait_until(lambda: len(list(parts.glob("part-*.jsonl"))) >= 2, proc, "committed chunk")
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == -signal.SIGTERM  # it still ends as SIGTERM does, for supervisors
    n = len(list(parts.glob("part-*.jsonl")))
    assert 2 <= n < 10 and not out.exists()
    assert re.search(rf"batch: stopped \(SIGTERM\): {n} chunks committed \({4 * n} records\) in .*out\.jsonl\.batch; "
                     r"rerun the same command to continue", err), err
    assert err.strip().splitlines()[-1] == "distilkit batch: stopped by SIGTERM"
    report = quiet(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=4)
    assert report.chunks_resumed == n and [r["id"] for r in read_jsonl(out)] == [r["id"] for r in records]


def test_a_second_job_on_the_same_output_is_refused_while_the_first_runs(tmp_path, qa_model):
    src = write_jsonl(tmp_path / "in.jsonl", qa_records(40))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(cli("--input", str(src), "--output", str(out), "--task", "qa", "--model", str(qa_model),
                                "--chunk-size", "4", "--progress", "none"), env=ENV)
    try:
        wait_until(lambda: any(work_dir(out).glob("part-*.jsonl")), proc, "committed chunk")
        with pytest.raises(BatchError, match="another batch job is writing .*out.jsonl"):
            quiet(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=4)
        assert proc.poll() is None  # the refused job touched nothing of the running one
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    report = quiet(input=str(src), output=str(out), task="qa", model=str(qa_model), chunk_size=4)
    assert report.records == 40  # the kernel dropped the dead job's lock


JOIN_KILLABLE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from distilkit.batch import sinks
    write = sinks.JsonlSink.write
    def slow(self, lines):  # the join writes one part, says so, and waits for the kill
        write(self, lines)
        self.f.flush()
        Path(sys.argv[1]).write_text("joining")
        time.sleep(600)
    sinks.JsonlSink.write = slow
    from distilkit.batch import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigkill_during_the_final_join_then_rerun_gives_the_uninterrupted_output(tmp_path, qa_model):
    records = qa_records(10)
    records[3] = {"id": "bad", "question": "", "context": "x"}
    src = write_jsonl(tmp_path / "in.jsonl", records)
    base = dict(input=str(src), task="qa", model=str(qa_model), chunk_size=3)
    clean = quiet(output=str(tmp_path / "clean.jsonl"), **base)

    out = tmp_path / "out.jsonl"
    marker = tmp_path / "joining"
    proc = subprocess.Popen([sys.executable, "-c", JOIN_KILLABLE, str(marker), "--input", str(src), "--output", str(out),
                             "--task", "qa", "--model", str(qa_model), "--chunk-size", "3", "--progress", "none"],
                            env=ENV)
    wait_until(marker.exists, proc, "join")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(work_dir(out).glob("part-*.jsonl"))) == 4
    assert list(tmp_path.glob(".out.jsonl.tmp-*"))  # the half-written join, aside
    report = quiet(output=str(out), **base)
    assert (report.records, report.errors, report.chunks_resumed) == (9, 1, 4)
    assert out.read_bytes() == clean.output.read_bytes()
    assert read_jsonl(report.errors_path) == read_jsonl(clean.errors_path)
    assert not list(tmp_path.glob(".out.jsonl.tmp-*"))


# ------------------------------------------------------------------------------ Ray
def _has_ray() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _family(root: int) -> set[int]:
    from distilkit.batch.engine_ray import _descendants

    return _descendants(root)


@pytest.mark.slow  # a local Ray instance takes ~30 s to start on 2 cores, twice
@pytest.mark.skipif(not _has_ray(), reason="Ray Data is not installed (pip install 'distilkit[ray]')")
def test_ray_is_quiet_and_a_killed_driver_leaves_no_ray_processes(tmp_path, qa_model):
    records = qa_records(24)
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = ["--input", str(src), "--output", str(out), "--task", "qa", "--model", str(qa_model), "--chunk-size", "4",
            "--engine", "ray", "--ray-actors", "1", "--progress", "none"]
    proc = subprocess.Popen(cli(*args), env=ENV, stderr=subprocess.DEVNULL)
    seen: set[int] = set()

    def watchdog_and_workers():
        seen.update(_family(proc.pid))
        names = [Path(f"/proc/{p}/cmdline").read_bytes() for p in seen if Path(f"/proc/{p}/cmdline").exists()]
        return any(b"distilkit.batch.engine_ray" in n for n in names) and any(b"raylet" in n for n in names)

    wait_until(watchdog_and_workers, proc, "Ray instance and watchdog", timeout=240)
    time.sleep(3)  # the actor starts too
    seen.update(_family(proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while {p for p in seen if Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text()
           .rsplit(")", 1)[1].split()[:1]}:
        assert time.monotonic() < deadline, "Ray processes outlived the killed driver by a minute"
        time.sleep(0.5)

    done = subprocess.run(cli(*args[:-2], "--progress", "lines"), env=ENV, stderr=subprocess.PIPE, timeout=600)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "core_worker" not in err and "Token authentication" not in err and "WARNING" not in err, err
    assert "Ray's own log lines go to" in err
    assert [r["id"] for r in read_jsonl(out)] == [r["id"] for r in records]
