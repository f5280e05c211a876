"""No silent random heads: a checkpoint without the task's head (or with a head of another kind)
is refused by load_model and so by every way in (pipeline, predict, serve, batch, evaluate,
bench); a fresh head is built only on request, and that is logged."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distilkit import pipeline
from distilkit.checkpoint import CheckpointError, load_model

TASK_HEAD = {"fill-mask": "masked-lm", "question-answering": "question-answering",
             "text-classification": "sequence-classification", "token-classification": "token-classification"}
# What transformers stores each head's output layer as, per family (the error names them).
HEAD_KEY = {
    ("distilbert", "masked-lm"): "vocab_transform.weight", ("bert", "masked-lm"): "cls.predictions.transform.dense.weight",
    ("distilbert", "question-answering"): "qa_outputs.weight", ("bert", "question-answering"): "qa_outputs.weight",
    ("distilbert", "sequence-classification"): "pre_classifier.weight",
    ("bert", "sequence-classification"): "classifier.weight",
    ("distilbert", "token-classification"): "classifier.weight", ("bert", "token-classification"): "classifier.weight",
}


def refused(task: str, model) -> str:
    with pytest.raises(CheckpointError) as e:
        pipeline(task, model=model)
    message = str(e.value)
    assert "\n" not in message and "fresh_head=True" in message and "finetune" in message
    return message


@pytest.mark.parametrize("task", list(TASK_HEAD))
@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_bare_encoder_is_refused_for_every_task(checkpoint, family, task):
    message = refused(task, checkpoint(family, None))
    assert "no task head" in message and HEAD_KEY[family, TASK_HEAD[task]] in message


@pytest.mark.parametrize("task", list(TASK_HEAD))
def test_headless_real_minilm_is_refused_for_every_task(minilm_dir, task):
    message = refused(task, minilm_dir)
    assert "no task head" in message and HEAD_KEY["bert", TASK_HEAD[task]] in message


@pytest.mark.parametrize("saved,task", [
    ("masked-lm", "question-answering"),  # the cases
    ("question-answering", "fill-mask"),
    ("sequence-classification", "token-classification"),
    ("token-classification", "text-classification"),
    ("question-answering", "text-classification"),
])
@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_a_head_of_another_kind_is_refused(checkpoint, family, saved, task):
    message = refused(task, checkpoint(family, saved))
    assert f"has a {saved} head, not the {TASK_HEAD[task]} head" in message


def test_sentence_classifier_is_not_read_as_a_token_classifier(checkpoint):
    """DistilBERT's `classifier` is both its token head and the second half of its sequence head:
    the emotion classifier once answered NER with "entity": "joy"."""
    message = refused("token-classification", checkpoint("distilbert", "sequence-classification"))
    assert "classifier.weight, classifier.bias belong to its sequence-classification head" in message


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def qa_without_head(checkpoint, tmp_path) -> Path:
    """A question-answering checkpoint (by its config.json) whose head weights were lost."""
    from safetensors.torch import load_file, save_file

    path = _copy(checkpoint("distilbert", "question-answering"), tmp_path / "qa-no-head")
    sd = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.startswith("qa_outputs.")}
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def test_saved_head_without_weights_is_refused(qa_without_head):
    for head in ("auto", "question-answering"):
        with pytest.raises(CheckpointError, match=r"incomplete question-answering head; missing weights: "
                                                  r"qa_outputs\.weight, qa_outputs\.bias"):
            load_model(qa_without_head, head=head)


@pytest.mark.parametrize("saved", ["sequence-classification", "token-classification"])
def test_head_read_from_the_weights_when_config_does_not_say(checkpoint, tmp_path, saved):
    path = _copy(checkpoint("distilbert", saved), tmp_path / "ckpt")
    _edit_config(path, architectures=None)
    assert load_model(path).head_name == saved
    other = ({"sequence-classification", "token-classification"} - {saved}).pop()
    with pytest.raises(CheckpointError, match=f"has a {saved} head"):
        load_model(path, head=other)


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_fresh_head_only_when_asked_and_logged(checkpoint, family, caplog):
    base = checkpoint(family, None)
    with caplog.at_level(logging.INFO, logger="distilkit.checkpoint"):
        model = load_model(base, head="question-answering", fresh_head=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "distilkit.checkpoint"]
    assert len(lines) == 1 and "freshly initialised question-answering head (qa_outputs.weight" in lines[0]
    assert model.head_name == "question-answering" and model.head.out.weight.std() > 0
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distilkit.checkpoint"):
        load_model(checkpoint(family, "question-answering"), head="question-answering", fresh_head=True)
    assert not [r for r in caplog.records if r.name == "distilkit.checkpoint"]  # a trained head is kept, silently


def test_fresh_head_keeps_a_trained_head_and_replaces_another_kind(checkpoint):
    import transformers as T

    qa = checkpoint("distilbert", "question-answering")
    ref = T.AutoModelForQuestionAnswering.from_pretrained(qa)
    kept = load_model(qa, head="question-answering", fresh_head=True)
    torch.testing.assert_close(kept.head.out.weight, ref.qa_outputs.weight, rtol=0, atol=0)
    # A sequence classifier's `classifier` must not seed a token head: the whole head starts fresh.
    cls = checkpoint("distilbert", "sequence-classification")
    ref_cls = T.AutoModelForSequenceClassification.from_pretrained(cls)
    fresh = load_model(cls, head="token-classification", fresh_head=True)
    assert fresh.head.out.weight.shape == ref_cls.classifier.weight.shape
    assert not torch.equal(fresh.head.out.weight, ref_cls.classifier.weight)
    assert torch.equal(fresh.head.out.bias, torch.zeros_like(fresh.head.out.bias))


@pytest.mark.parametrize("saved", [None, "masked-lm", "question-answering", "sequence-classification",
                                   "token-classification"])
def test_head_none_is_the_bare_encoder_of_any_checkpoint(checkpoint, saved):
    path = checkpoint("bert", saved)
    bare = load_model(path, head=None)
    assert bare.head_name is None and bare.head is None
    full = load_model(path)
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    with torch.no_grad():
        torch.testing.assert_close(bare(ids).last_hidden_state, full(ids).last_hidden_state, rtol=0, atol=0)


# ---------------------------------------------------------------------- every way in

def test_predict_cli_refuses_in_one_line(checkpoint):
    request = json.dumps({"question": "Who?", "context": "My name is John."})
    out = subprocess.run([sys.executable, "-m", "distilkit.cli", "predict", "question-answering", "--model",
                          str(checkpoint("distilbert", "masked-lm"))], input=request, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    body = json.loads(lines[0])
    assert body["error_type"] == "model_error" and "qa_outputs.weight" in body["error"]


def test_serve_fails_at_startup(checkpoint, capsys, monkeypatch):
    from distilkit.serve.__main__ import main

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    code = main(["--task", "token-classification", "--model", str(checkpoint("distilbert", "sequence-classification")),
                 "--port", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "CheckpointError" in err and "not the token-classification head" in err


def test_batch_refuses_in_one_line(checkpoint, tmp_path, capsys):
    from distilkit.batch import main

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": 1, "text": "My name is John."}) + "\n")
    code = main(["--task", "token-classification", "--model", str(checkpoint("bert", None)), "--input", str(src),
                 "--output", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err.strip()
    # (batch announces the job on its first line)
    assert code == 2 and "Traceback" not in err and err.splitlines()[-1].startswith("distilkit batch: error: ")
    assert "no task head" in err.splitlines()[-1]
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""


def test_evaluate_refuses_in_one_line(checkpoint, tmp_path, capsys):
    from distilkit.evaluate import main

    data = tmp_path / "data.txt"
    data.write_text("i love it;joy\ni hate it;anger\n")
    code = main(["--task", "text-classification", "--model", str(checkpoint("distilbert", "question-answering")),
                 "--data", str(data)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not the sequence-classification head" in err


def test_bench_refuses_a_checkpoint_without_its_head(qa_without_head, capsys):
    from distilkit.bench import main

    with pytest.raises(SystemExit) as e:  # bench reports through argparse: usage, then the error line
        main(["--model", str(qa_without_head), "--rounds", "1", "--batch", "1", "--tokens", "8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("distilkit bench: error: ") and "qa_outputs.weight" in err


def test_predict_debug_shows_the_traceback(checkpoint, monkeypatch, capsys):
    from distilkit.cli import main

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(json.dumps({"inputs": "My name is John."})))
    with pytest.raises(CheckpointError, match="no task head"):
        main(["predict", "token-classification", "--model", str(checkpoint("bert", None)), "--debug"])
