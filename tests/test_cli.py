"""`distilkit predict` on the seed cards' requests, against tiny local models, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distilkit.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_help_is_instant_and_does_not_import_torch():
    t = time.perf_counter()
    out = run_cli("--help")
    assert out.returncode == 0 and "predict" in out.stdout
    assert time.perf_counter() - t < 5  # generous on a loaded machine; ~0.2 s when quiet
    probe = subprocess.run([sys.executable, "-c", "import sys, distilkit.cli as c; c.build_parser(); "
                            "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False"


def test_seed_question_answering_request(checkpoint):
    model = checkpoint("distilbert", "question-answering", head_scale=20.0)
    request = {"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"}}
    out = run_cli("predict", "question-answering", "--model", str(model), stdin=json.dumps(request))
    assert out.returncode == 0, out.stderr
    answers = json.loads(out.stdout)
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)
    assert answers[0] in request["input_data"]["context"]
    full = run_cli("predict", "question-answering", "--model", str(model), "--full", stdin=json.dumps(request))
    [obj] = json.loads(full.stdout)
    assert set(obj) == {"score", "start", "end", "answer"} and obj["answer"] == answers[0]


def test_seed_fill_mask_request(checkpoint, tmp_path):
    model = checkpoint("distilbert", "masked-lm", head_scale=5.0)
    request = {"inputs": {"input_string": ["Paris is the [MASK] of France.", "Today is a [MASK] day!"]},
               "parameters": {"top_k": 2}}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    out = run_cli("predict", "fill-mask", "--model", str(model), "--input", str(path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result) == 2 and all(len(row) == 2 for row in result)
    for row in result:
        for pred in row:
            assert set(pred) == {"score", "token", "token_str", "sequence"}
            assert isinstance(pred["score"], float) and isinstance(pred["token"], int)
        assert row[0]["score"] >= row[1]["score"]


@pytest.mark.parametrize("stdin,error_type", [
    ("{not json", "invalid_json"),
    (json.dumps({"inputs": {"input_string": ["no mask here"]}}), "validation_error"),
    (json.dumps({"inputs": {"input_string": ["a [MASK]"]}, "parameters": {"top_k": "two"}}), "validation_error"),
])
def test_bad_requests_are_clear_json_errors(checkpoint, stdin, error_type):
    model = checkpoint("distilbert", "masked-lm")
    out = run_cli("predict", "fill-mask", "--model", str(model), stdin=stdin)
    assert out.returncode == 2
    err = json.loads(out.stderr.strip().splitlines()[-1])
    assert err["error_type"] == error_type and err["error"]
    assert "Traceback" not in out.stderr


def test_missing_model_says_how_to_pass_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    request = {"input_data": {"question": "What's my name?", "context": "My name is John"}}
    out = run_cli("predict", "question-answering", stdin=json.dumps(request))
    assert out.returncode == 2 and "--model /path/to/" in out.stderr and "Traceback" not in out.stderr
