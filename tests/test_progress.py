"""The shared progress display: plain lines in a log, a tqdm bar on a terminal, one summary."""

from __future__ import annotations

import io
import threading
import time

import pytest

from distilkit.progress import Progress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def wait_for(predicate, timeout: float = 20.0) -> None:
    # a deadline only so a broken timer fails instead of hanging; not a timing assertion
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def test_lines_in_a_log_start_at_once_repeat_and_end_with_one_summary():
    log = io.StringIO()
    with progress(100, "job", "records", interval=0.05, stream=log) as p:  # auto on a non-TTY: lines
        assert log.getvalue().splitlines() == ["job: 0% 0/100 records | - records/s | elapsed 00:00 | ETA ?"]
        p.update(40, errors=2)
        wait_for(lambda: "40/100" in log.getvalue())
        line = next(x for x in log.getvalue().splitlines() if "40/100" in x)
        assert line.startswith("job: 40% 40/100 records | ") and line.endswith(" | errors=2")
        assert " records/s | elapsed " in line and "ETA ?" not in line
        p.update(60)
        summary = p.summary("-> out.jsonl")
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.endswith(summary + "\n")
    assert summary.startswith("job: done: 100 records in ") and summary.endswith(", errors=2; -> out.jsonl")
    assert text.count("done:") == 1


def test_the_summary_of_a_run_that_counted_nothing_has_no_rate():
    log = io.StringIO()
    with progress(None, "batch", "records", initial=500, mode="lines", stream=log) as p:
        summary = p.summary()
    assert summary.startswith("batch: done: 0 records in ") and summary.endswith(", 500 resumed")
    assert "/s" not in summary


def test_resumed_work_and_time_before_the_clock_restarts_are_not_this_runs_rate(monkeypatch):
    import distilkit.progress as module

    now = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])  # a clock the test moves
    p = Progress(1000, "job", "records", initial=900, mode="none")
    now[0] += 30  # loading the model
    p.restart_clock()
    assert p.rate is None and p.counted == 0
    now[0] += 5
    p.update(50)
    assert (p.counted, p.n, p.rate, p.eta) == (50, 950, 10.0, 5.0)  # 50 in 5 s; 50 left
    assert p.wall == 35.0 and p.elapsed == 5.0
    assert p.summary().startswith("job: done: 50 records in 35.0s (10.0 records/s), 900 resumed")


def test_eta_from_the_share_of_input_read_when_the_total_is_unknown(monkeypatch):
    import distilkit.progress as module

    now = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    p = Progress(None, "job", "records", mode="none")
    p.set_fraction(0.5)  # skipped (already done) before anything was counted: not this run's progress
    assert p.eta == float("inf")
    now[0] += 8
    p.update(10)
    p.set_fraction(0.75)
    assert p.eta == 8.0  # a quarter of the input in 8 s: another quarter to go
    assert p.status() == "job: 75% 10 records | 1.2 records/s | elapsed 00:08 | ETA 00:08"


def test_a_terminal_gets_a_tqdm_bar_and_messages_do_not_break_it():
    tty = Terminal()
    with progress(10, "job", "records", stream=tty) as p:
        p.update(4)
        p.write("a message")
        p.update(6)
        p.summary()
    text = tty.getvalue()
    assert "\r" in text and "|" in text and "10/10" in text and " records/s" in text
    assert "a message\n" in text  # tqdm clears the bar, prints the line, redraws the bar below it
    assert text.rstrip("\n").splitlines()[-1].startswith("job: done: 10 records in ")


def test_disabled_progress_prints_nothing():
    log = io.StringIO()
    with progress(10, "job", stream=log, enabled=False) as p:
        p.update(10)
        p.write("hidden")
        p.summary()
    assert log.getvalue() == ""


def test_mode_none_prints_messages_and_the_summary_only():
    log = io.StringIO()
    with progress(10, "job", "steps", mode="none", stream=log) as p:
        p.update(10)
        p.write("hello")
        p.summary()
    lines = log.getvalue().splitlines()
    assert lines[0] == "hello" and lines[1].startswith("job: done: 10 steps in ") and len(lines) == 2


def test_environment_defaults_and_bad_options(monkeypatch):
    monkeypatch.setenv("DISTILKIT_PROGRESS", "none")
    monkeypatch.setenv("DISTILKIT_PROGRESS_INTERVAL", "2.5")
    p = Progress(stream=io.StringIO())
    assert (p.mode, p.interval) == ("none", 2.5)
    monkeypatch.setenv("DISTILKIT_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="DISTILKIT_PROGRESS_INTERVAL"):
        Progress(stream=io.StringIO())
    with pytest.raises(ValueError, match="mode"):
        Progress(mode="fancy", interval=1, stream=io.StringIO())
    with pytest.raises(ValueError, match="positive"):
        Progress(mode="none", interval=0, stream=io.StringIO())


def test_updates_from_many_threads_all_count():
    p = Progress(None, mode="lines", interval=0.01, stream=io.StringIO())
    workers = [threading.Thread(target=lambda: [p.update(1) for _ in range(2000)]) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    p.close()
    assert p.n == 8000


def test_the_bar_estimates_the_total_from_the_share_that_holds_a_known_count():
    tty = Terminal()
    with progress(None, "job", "records", stream=tty) as p:
        p.set_fraction(0.25, count=10)  # 10 records are a quarter of the input...
        p.update(14)  # ...and 4 more are done in the next, unfinished piece
        p.close()
    assert "14/40" in tty.getvalue()
