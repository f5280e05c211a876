"""Distillation end to end on tiny models: the losses fall, the student loads in transformers,
resume repeats the uninterrupted run, and every shipped distillation recipe loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers as T

from conftest import CORPUS
from distilkit.train.distill import DistillConfig, distill

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add noise and overhead


def _train_losses(out: Path) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["type"] == "train"]


def _options(tmp_path: Path, **kw) -> dict:
    return dict(output_dir=str(tmp_path / "out"), batch_size=8, lr=3e-3, warmup_steps=0, log_every=1,
                progress=False, tensorboard=False, plot=False, seed=0, teacher_precision="fp32", **kw)


def test_general_distillation_losses_fall_and_student_loads(checkpoint, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 6) + "\n")
    cfg = DistillConfig(task="masked-lm", teacher=str(checkpoint("bert", "masked-lm", head_scale=3.0)),
                        student_n_layers=1, student_family="distilbert", train_file=str(text), data_dir=".",
                        max_seq_len=32, max_steps=40, mlm_smoothing=0.7, **_options(tmp_path))
    report = distill(cfg)
    losses = _train_losses(tmp_path / "out")
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    logged = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_ce", "loss_mlm", "loss_cos"} <= set(logged[-1])
    for r in (r for r in logged if r["type"] == "train"):  # the parts make up the logged loss
        assert r["loss"] == pytest.approx(5 * r["loss_ce"] + 2 * r["loss_mlm"] + r["loss_cos"], rel=1e-5)
    student = T.AutoModelForMaskedLM.from_pretrained(report["student"])
    assert student.config.model_type == "distilbert" and student.config.n_layers == 1


def test_logged_loss_parts_are_window_means_like_the_loss(checkpoint, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 4) + "\n")
    options = {**_options(tmp_path), "log_every": 3}
    distill(DistillConfig(task="masked-lm", teacher=str(checkpoint("bert", "masked-lm")), student_n_layers=1,
                          train_file=str(text), data_dir=".", max_seq_len=32, max_steps=6, **options))
    logged = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["type"] == "train"]
    assert [r["step"] for r in train] == [3, 6]
    for r in train:
        assert r["loss"] == pytest.approx(5 * r["loss_ce"] + 2 * r["loss_mlm"] + r["loss_cos"], rel=1e-5)


def test_general_distillation_resume_equals_uninterrupted(checkpoint, tmp_path):
    """Masks come from the checkpointed RNG: resuming at step 3 repeats steps 4-6 exactly."""
    import shutil

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 4) + "\n")
    base = dict(task="masked-lm", teacher=str(checkpoint("bert", "masked-lm")), student_n_layers=1,
                train_file=str(text), data_dir=".", max_seq_len=32, max_steps=6, save_every=3, keep_checkpoints=5)
    distill(DistillConfig(**base, **_options(tmp_path / "full")))
    resumed = DistillConfig(**base, **_options(tmp_path / "resumed"))
    step3 = tmp_path / "full" / "out" / "checkpoints" / "step-0000003"
    shutil.copytree(step3, Path(resumed.output_dir) / "checkpoints" / step3.name)
    distill(resumed, resume=True)
    a, b = _train_losses(tmp_path / "full" / "out"), _train_losses(tmp_path / "resumed" / "out")
    assert len(b) == 3 and b == pytest.approx(a[-3:], abs=1e-6)


def test_task_distillation_classification(checkpoint, tmp_path):
    data = tmp_path / "emotion.txt"
    labels = ["sadness", "joy", "anger"]
    data.write_text("".join(f"{line};{labels[i % 3]}\n" for i, line in enumerate(CORPUS * 4)))
    teacher = checkpoint("bert", "sequence-classification", head_scale=5.0, num_hidden_layers=2)
    cfg = DistillConfig(task="text-classification", teacher=str(teacher), student_layers=[1], train_file=str(data),
                        valid_file=str(data), data_dir=".", labels=labels, max_seq_len=32, epochs=3,
                        **_options(tmp_path))
    report = distill(cfg)
    losses = _train_losses(tmp_path / "out")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    comparison = report["comparison"]
    assert "accuracy" in comparison["student"]["metrics"]
    student = T.AutoModelForSequenceClassification.from_pretrained(report["student"])
    # The models' own parameter counts, as transformers counts them (not a runtime view of them).
    expected = {"teacher": T.AutoModelForSequenceClassification.from_pretrained(teacher).num_parameters(),
                "student": student.num_parameters()}
    assert {k: comparison[k]["parameters"] for k in expected} == expected
    assert comparison["student_vs_teacher"]["parameters"] == pytest.approx(expected["student"] / expected["teacher"])
    assert student.config.num_hidden_layers == 1 and student.config.id2label[1] == "joy"


def test_task_distillation_question_answering(checkpoint, tmp_path):
    squad = {"data": [{"title": "t", "paragraphs": [{"context": CORPUS[0] + " " + CORPUS[6], "qas": [
        {"id": "1", "question": "Where do I live?", "answers": [{"text": "Seattle", "answer_start": 30}]},
        {"id": "2", "question": "What is my name?", "answers": [{"text": "John", "answer_start": 11}]},
    ]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    teacher = checkpoint("distilbert", "question-answering", head_scale=5.0)
    cfg = DistillConfig(task="question-answering", teacher=str(teacher), student_n_layers=1, train_file=str(path),
                        data_dir=".", max_seq_len=64, doc_stride=16, max_steps=8, **_options(tmp_path))
    report = distill(cfg)
    assert len(_train_losses(tmp_path / "out")) == 8
    T.AutoModelForQuestionAnswering.from_pretrained(report["student"])


def test_every_distillation_recipe_loads():
    recipes = sorted((ROOT / "configs" / "distill").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"emotion_task", "imdb_general"}
    for path in recipes:
        cfg = DistillConfig.load(path)
        assert cfg.teacher and cfg.train_file and cfg.alpha_ce > 0 and cfg.temperature > 0
