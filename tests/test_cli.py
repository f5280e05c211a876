"""`distilkit predict` on the seed cards' requests, against tiny local models, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import transformers as T

from expect import assert_same


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distilkit.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_help_does_not_import_torch():
    out = run_cli("--help")
    assert out.returncode == 0 and "predict" in out.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, distilkit.cli as c; c.build_parser(); "
                            "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False"


def test_seed_question_answering_request(checkpoint):
    model = checkpoint("distilbert", "question-answering", head_scale=20.0)
    question, context = "What's my name?", "My name is John and I live in Seattle"
    expected = T.pipeline("question-answering", model=str(model), tokenizer=str(model))(question=question, context=context)
    request = {"input_data": {"question": question, "context": context}}
    out = run_cli("predict", "question-answering", "--model", str(model), stdin=json.dumps(request))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [expected["answer"]]  # the catalog shape: the answer strings
    full = run_cli("predict", "question-answering", "--model", str(model), "--full", stdin=json.dumps(request))
    assert full.returncode == 0, full.stderr
    [obj] = json.loads(full.stdout)
    assert_same(obj, {**expected, "score": float(expected["score"])})


def test_seed_fill_mask_request(checkpoint, tmp_path):
    model = checkpoint("distilbert", "masked-lm", head_scale=5.0)
    sentences = ["Paris is the [MASK] of France.", "Today is a [MASK] day!"]
    request = {"inputs": {"input_string": sentences}, "parameters": {"top_k": 2}}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    out = run_cli("predict", "fill-mask", "--model", str(model), "--input", str(path))
    assert out.returncode == 0, out.stderr
    expected = T.pipeline("fill-mask", model=str(model), tokenizer=str(model))(sentences, top_k=2)
    assert_same(json.loads(out.stdout), expected)


def test_the_model_defaults_to_DISTILKIT_MODEL(checkpoint, tmp_path, monkeypatch):
    """Without --model, $DISTILKIT_MODEL names the model (offline, the seed checkpoint would fail)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = checkpoint("distilbert", "question-answering", head_scale=20.0)
    request = json.dumps({"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"}})
    named = run_cli("predict", "question-answering", "--model", str(model), "--full", stdin=request)
    assert named.returncode == 0, named.stderr
    monkeypatch.setenv("DISTILKIT_MODEL", str(model))
    default = run_cli("predict", "question-answering", "--full", stdin=request)
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout) == json.loads(named.stdout)
    # and in the Python API
    from distilkit import pipeline

    [answer] = json.loads(named.stdout)
    assert pipeline("question-answering")(question="What's my name?", context="My name is John and I live in Seattle") == answer


def test_batch_defaults_to_DISTILKIT_MODEL(checkpoint, tmp_path, monkeypatch):
    from distilkit import pipeline
    from distilkit.batch import run_batch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = checkpoint("distilbert", "question-answering", head_scale=20.0)
    monkeypatch.setenv("DISTILKIT_MODEL", str(model))
    records = tmp_path / "in.jsonl"
    example = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}
    records.write_text(json.dumps({"id": "a", **example}) + "\n")
    run_batch(str(records), str(tmp_path / "out.jsonl"), "question-answering", progress="none")
    [row] = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert_same(row["result"], pipeline("question-answering", model=model)(**example))


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
