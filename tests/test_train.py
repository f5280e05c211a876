"""The training loop and the fine-tuning recipe on tiny models: options, data order, loss goes
down for each task, exact resume, and a 2-process torchrun run equal to one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distilkit.train import loop
from distilkit.train.finetune import FinetuneConfig, finetune, infer_labels

ROOT = Path(__file__).resolve().parents[1]

TEXTS = [
    ("My name is John and I live in Seattle.", "joy"),
    ("Paris is the capital of France and its largest city.", "joy"),
    ("Today is a beautiful day! The weather is glorious.", "joy"),
    ("Alice is sitting on the bench. Bob is sitting next to her.", "sadness"),
    ("Who is the CEO? What is a good example of a question?", "sadness"),
    ("I can't believe you're here; we've been waiting since 1999.", "anger"),
    ("Machine learning models are smaller, faster, cheaper and lighter.", "anger"),
    ("The Normans gave their name to Normandy.", "sadness"),
]
SENTENCES = [
    (["John", "lives", "in", "Seattle", "."], ["B-PER", "O", "O", "B-LOC", "O"]),
    (["Paris", "is", "the", "capital", "of", "France"], ["B-LOC", "O", "O", "O", "O", "B-LOC"]),
    (["Hugging", "Face", "Inc.", "is", "based", "in", "New", "York"], ["B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "B-LOC", "I-LOC"]),
    (["Alice", "is", "sitting", "next", "to", "Bob"], ["B-PER", "O", "O", "O", "O", "B-PER"]),
    (["Bob", "waited", "since", "1999"], ["B-PER", "O", "O", "O"]),
    (["The", "Normans", "gave", "their", "name", "to", "Normandy"], ["O", "B-ORG", "O", "O", "O", "O", "B-LOC"]),
]
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy. "
           "Paris is the capital of France and its largest city. Alice is sitting on the bench.")
QUESTIONS = [("Who gave their name to Normandy?", "The Normans"), ("What is the capital of France?", "Paris"),
             ("Where is Alice sitting?", "on the bench"), ("What is the largest city of France?", "Paris"),
             ("When did the Normans live?", "10th and 11th centuries"), ("What is the weather like?", None)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add noise and overhead


def write_data(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "emotion.txt").write_text("".join(f"{t};{lab}\n" for t, lab in TEXTS))
    (d / "ner.txt").write_text("\n\n".join("\n".join(f"{w} X X {t}" for w, t in zip(ws, ts)) for ws, ts in SENTENCES) + "\n")
    qas = [{"id": str(i), "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}] if a else [],
            "is_impossible": a is None} for i, (q, a) in enumerate(QUESTIONS)]
    (d / "squad.json").write_text(json.dumps({"version": "v2.0", "data": [
        {"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return d


TASK_FILES = {"text-classification": "emotion.txt", "token-classification": "ner.txt", "question-answering": "squad.json"}


def tiny_config(tmp_path: Path, task: str, model: Path, **overrides) -> FinetuneConfig:
    data = write_data(tmp_path / "data")
    values = dict(task=task, model=str(model), data_dir=str(data), train_file=TASK_FILES[task], output_dir=str(tmp_path / "out"),
                  batch_size=2, max_steps=10, lr=3e-3, warmup_steps=2, log_every=1, progress=False, plot=False,
                  precision="fp32", max_seq_len=48, doc_stride=16, version_2_with_negative=True, dropout=0.0)
    values.update(overrides)
    return FinetuneConfig(**values)


def cli_args(tmp_path: Path, model: Path, **overrides) -> list[str]:
    """tiny_config's options (text classification) as key=value command-line overrides."""
    cfg = tiny_config(tmp_path, "text-classification", model, **overrides)
    return [f"{k}={v}" for k, v in cfg.to_dict().items()
            if v is not None and k in {"task", "model", "data_dir", "train_file", "output_dir", *overrides}
            or k in ("batch_size", "max_steps", "lr", "warmup_steps", "log_every", "precision", "max_seq_len", "plot")]


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    return err


def losses(output_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (output_dir / "metrics.jsonl").read_text().splitlines() if x]
    return {r["step"]: r["loss"] for r in lines if r["type"] == "train"}


# ---------------------------------------------------------------------- options
def test_every_shipped_recipe_loads():
    recipes = sorted((ROOT / "configs").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"emotion", "conll2003", "squad_v1", "squad_v2"}
    for path in recipes:
        cfg = FinetuneConfig.load(path)
        assert cfg.task in ("text-classification", "token-classification", "question-answering"), path
        assert cfg.train_file and cfg.metric and cfg.lr > 0
    v2 = FinetuneConfig.load(ROOT / "configs/squad_v2.yaml")
    assert v2.train_range == "0:12" and v2.valid_range == "12:16" and v2.version_2_with_negative


def test_overrides_are_typed_by_the_dataclass(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: token-classification\ntrain_file: a.txt\nlr: 5e-5\nlabels: [O, B-X]\n")
    cfg = FinetuneConfig.load(recipe, ["epochs=2", "train_range=0:12", "label_all_tokens=true", "dropout=none",
                                       "columns={tokens: words}", "labels=O,B-X,I-X"], seed=7)
    assert (cfg.lr, cfg.epochs, cfg.train_range, cfg.label_all_tokens, cfg.dropout, cfg.seed) == (5e-5, 2, "0:12", True, None, 7)
    assert cfg.columns == {"tokens": "words"} and cfg.labels == ["O", "B-X", "I-X"] and cfg.metric == "f1"
    with pytest.raises(ValueError, match="unknown option"):
        FinetuneConfig.load(recipe, ["learning_rate=1"])
    with pytest.raises(ValueError, match="option 'epochs': Input should be a valid integer"):
        FinetuneConfig.load(recipe, ["epochs=two"])


def test_cli_prints_the_resolved_config(capsys):
    from distilkit.train.finetune import main

    assert main([str(ROOT / "configs/emotion.yaml"), "epochs=1", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs"] == 1 and printed["labels"][0] == "sadness"


def test_squad_v1_semantics_leave_out_unanswerable_questions(tmp_path, capsys):
    from distilkit.train.finetune import read_split

    cfg = tiny_config(tmp_path, "question-answering", tmp_path, version_2_with_negative=False)
    records = read_split(cfg, cfg.train_file, None)
    assert [r["question"] for r in records] == [q for q, a in QUESTIONS if a]
    assert "left out 1 unanswerable of 6 questions" in capsys.readouterr().err
    v2 = tiny_config(tmp_path, "question-answering", tmp_path, version_2_with_negative=True)
    assert len(read_split(v2, v2.train_file, None)) == len(QUESTIONS)


def test_label_inference_orders_ner_tags():
    recs = [{"tags": ["I-PER", "O", "B-PER", "B-LOC"]}]
    assert infer_labels("token-classification", recs) == ["O", "B-LOC", "B-PER", "I-PER"]


# ---------------------------------------------------------------------- data order and schedule
def test_epoch_batches_are_a_function_of_seed_and_epoch():
    lengths = list(np.random.default_rng(0).integers(3, 60, size=103))
    a = loop.epoch_batches(103, 8, seed=1, epoch=0, lengths=lengths)
    assert [b.tolist() for b in a] == [b.tolist() for b in loop.epoch_batches(103, 8, 1, 0, lengths)]
    assert sorted(np.concatenate(a).tolist()) == list(range(103))
    assert [b.tolist() for b in a] != [b.tolist() for b in loop.epoch_batches(103, 8, 1, 1, lengths)]
    # length-grouped: padding waste well below random batches
    waste = lambda bs: sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert waste(a) < 0.5 * waste(loop.epoch_batches(103, 8, 1, 0))
    assert all(len(b) >= 4 for b in loop.epoch_batches(103, 8, 1, 0, min_size=4))  # the 7-example tail is dropped
    parts = loop.micro_batches(np.arange(10), loop.Dist(rank=1, world=2), grad_accum=2)
    assert [p.tolist() for p in parts] == [[6, 7], [8, 9]]


def test_linear_warmup_then_decay():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = loop.linear_schedule(opt, warmup=3, total=7)
    lrs = []
    for _ in range(7):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25])


# ---------------------------------------------------------------------- training runs
# The tiny random encoders give nearly the same first-token state for every text, so sentence
# classification needs more steps before it separates the classes than the token-level tasks.
@pytest.mark.parametrize("task,family,steps,lr", [("text-classification", "bert", 32, 1e-2),
                                                  ("token-classification", "distilbert", 12, 1e-2),
                                                  ("question-answering", "bert", 12, 1e-2)])
def test_a_few_steps_lower_the_loss(tmp_path, checkpoint, task, family, steps, lr):
    cfg = tiny_config(tmp_path, task, checkpoint(family, None), max_steps=steps, lr=lr, valid_file=TASK_FILES[task],
                      test_file=TASK_FILES[task])
    report = finetune(cfg)
    curve = list(losses(Path(cfg.output_dir)).values())
    assert len(curve) == steps
    assert np.mean(curve[-4:]) < 0.8 * np.mean(curve[:4]), curve
    out = Path(cfg.output_dir)
    assert report["best_step"] is not None and (out / "best" / "model.safetensors").is_file()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert report["test"] and (out / "test_metrics.json").is_file()
    # The result is an HF checkpoint transformers reads, with the labels it was trained on.
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(out)
    if task == "text-classification":
        assert hf.id2label == {0: "anger", 1: "joy", 2: "sadness"} and "accuracy" in report["test"]
    elif task == "token-classification":
        assert hf.id2label[0] == "O" and "f1" in report["test"]
    else:
        assert "HasAns_exact" in report["test"] and "best_f1_thresh" in report["test"]


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, checkpoint):
    model = checkpoint("bert", None)
    # Dropout on: the restored RNG state must give the same masks. 8 examples / batch 2 x accum 2: 2 steps
    # per epoch, so step 3 is mid-epoch.
    full = tiny_config(tmp_path / "a", "text-classification", model, max_steps=7, grad_accum=2, save_every=3,
                       keep_checkpoints=10, dropout=0.1)
    finetune(full)
    expected = losses(Path(full.output_dir))
    ckpt = Path(full.output_dir) / "checkpoints" / "step-0000003"
    assert json.loads((ckpt / "trainer_state.json").read_text())["position"] == 1
    resumed = tiny_config(tmp_path / "b", "text-classification", model, max_steps=7, grad_accum=2, save_every=3,
                          dropout=0.1, data_dir=full.data_dir)
    shutil.copytree(ckpt, Path(resumed.output_dir) / "checkpoints" / ckpt.name)
    finetune(resumed, resume=True)
    got = losses(Path(resumed.output_dir))
    assert sorted(got) == [4, 5, 6, 7]
    for step in got:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    with pytest.raises(ValueError, match="trained with other options \\(max_steps 7 -> 9\\)"):
        finetune(tiny_config(tmp_path / "b", "text-classification", model, max_steps=9, grad_accum=2, save_every=3,
                             dropout=0.1, data_dir=full.data_dir), resume=True)


def test_two_processes_under_torchrun_equal_one(tmp_path, checkpoint):
    """Same global batch (2 processes x 2 vs 1 process x 2 micro-batches of 2): the same losses."""
    model = checkpoint("bert", None)
    single = tiny_config(tmp_path / "one", "token-classification", model, max_steps=4, grad_accum=2)
    finetune(single)
    data = tmp_path / "one" / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "two" / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "distilkit.train.finetune", "task=token-classification", f"model={model}", f"data_dir={data}",
           "train_file=ner.txt", f"output_dir={out}", "batch_size=2", "grad_accum=1", "max_steps=4", "lr=3e-3",
           "warmup_steps=2", "log_every=1", "progress=false", "plot=false", "precision=fp32", "max_seq_len=48",
           "dropout=0", "num_threads=1"]
    # Its own session, so that a timeout takes the workers down with the launcher.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 300 s:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    assert "2 process(es)" in stderr
    one, two = losses(Path(single.output_dir)), losses(out)
    assert sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
    # The final weights agree too.
    from safetensors.torch import load_file

    w1, w2 = load_file(str(Path(single.output_dir) / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_eval", [True, False])
def test_curves_plot_the_metrics_or_else_the_loss_parts(tmp_path, with_eval):
    pytest.importorskip("matplotlib")
    from distilkit.train.loop import plot_curves

    lines = [{"type": "train", "step": s, "loss": 3.0 / s, "loss_ce": 1.0 / s, "loss_mlm": 2.0 / s} for s in (1, 2, 3)]
    if with_eval:
        lines.append({"type": "eval", "step": 3, "epoch": 1.0, "accuracy": 0.5, "support": 10})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = plot_curves(metrics, tmp_path / "curves.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- the command line
def test_help_shows_types_defaults_and_allowed_values(capsys):
    from distilkit.train.finetune import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "precision (auto|fp32|bf16|fp16, default 'auto')" in out
    assert "lr (float, default 5e-05, > 0)" in out and "peak learning rate" in out
    assert "task (text-classification|token-classification|question-answering, default 'text-classification')" in out


def test_overrides_before_or_after_flags_and_did_you_mean(capsys, tmp_path):
    from distilkit.train.finetune import main

    assert main(["--print-config", str(ROOT / "configs/emotion.yaml"), "model=X", "epochs=1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["epochs"]) == ("X", 1)
    err = one_line_error(capsys, main([str(ROOT / "configs/emotion.yaml"), "learning_rate=1", "--print-config"]))
    assert "unknown option 'learning_rate' (did you mean 'lr'?)" in err
    assert "option 'train_file' is required (in the recipe or as train_file=...)" in one_line_error(capsys, main([]))
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        FinetuneConfig.load(ROOT / "configs/emotion.yaml", ["epoch=2"])
    with pytest.raises(ValueError, match="precision\n  Input should be 'auto', 'fp32', 'bf16' or 'fp16'"):
        FinetuneConfig(train_file="x", precision="fp64")


def test_resume_refuses_changed_options_unless_told(tmp_path, checkpoint, capsys):
    from distilkit.train.finetune import main

    model = checkpoint("bert", None)
    args = cli_args(tmp_path, model, max_steps=4, save_every=2, keep_checkpoints=10)
    assert main(args) == 0
    out = tmp_path / "out"
    saved = (out / "finetune_config.json").read_text()
    step2 = str(out / "checkpoints" / "step-0000002")
    capsys.readouterr()
    err = one_line_error(capsys, main(args + ["lr=0.01", "seed=7", "--resume-from", step2]))
    assert "trained with other options (lr 0.003 -> 0.01, seed 42 -> 7)" in err and "--allow-changed-options" in err
    assert (out / "finetune_config.json").read_text() == saved and not (out / "resumes.jsonl").exists()
    # Told to: the new lr is the one that trains, and the change is recorded beside the untouched config.
    assert main(args + ["lr=0.01", "keep_checkpoints=3", "--resume-from", step2, "--allow-changed-options"]) == 0
    assert (out / "finetune_config.json").read_text() == saved
    (record,) = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == 2 and record["changed"] == {"lr": [0.003, 0.01], "keep_checkpoints": [10, 3]}
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if r["type"] == "train"}
    # Warmup 2 of 4 steps: after step 3 the schedule's factor is 0.5 of the peak, the new one (the
    # restored optimizer alone would have kept 0.003 and logged 0.0015).
    assert lrs[2] == pytest.approx(0.003) and lrs[3] == pytest.approx(0.005)


def test_a_second_run_on_the_same_output_dir_is_refused_while_the_first_runs(tmp_path, checkpoint, capsys):
    from distilkit.train.finetune import main

    model = checkpoint("bert", None)
    args = cli_args(tmp_path, model, max_steps=100000, log_every=1)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISTILKIT_PROGRESS_INTERVAL": "0.2"}
    first = subprocess.Popen([sys.executable, "-m", "distilkit", "finetune", *args, "progress=true"], env=env,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            err = one_line_error(capsys, main(args + extra))
            assert f"output_dir {out} is in use by another training run (pid {first.pid} " in err, err
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        _, stderr = first.communicate()
    # Piped, the progress is plain lines: no \r redraws.
    assert "\r" not in stderr and "train: " in stderr and " steps/s" in stderr, stderr[-2000:]
    # The kernel released the lock with the killed process: a new run may start.
    assert main(cli_args(tmp_path, model, max_steps=2)) == 0


def test_recipe_errors_are_one_line_with_exit_2(tmp_path, checkpoint, capsys, monkeypatch):
    from distilkit.train import distill as D
    from distilkit.train.finetune import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("task: text-classification\nlabels: [a, b\n")
    assert "bad.yaml: not valid YAML" in one_line_error(capsys, main([str(bad)]))
    base = cli_args(tmp_path, checkpoint("bert", None), max_steps=2)
    missing = str(tmp_path / "no" / "model")
    assert "is not a directory" in one_line_error(capsys, main(base + [f"model={missing}"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = one_line_error(capsys, main(base + ["model=someone/not-cached-model"]))
    assert "someone/not-cached-model" in err and "HF_HUB_OFFLINE" in err
    assert "no checkpoint under" in one_line_error(capsys, main(base + ["--resume"]))
    # A classifier with 3 labels (config.json) asked to train 2 (the recipe): both numbers, both sources.
    classifier = checkpoint("bert", "sequence-classification")
    err = one_line_error(capsys, main(base + [f"model={classifier}", "labels=[joy, anger]"]))
    assert "head has 3 labels" in err and "config.json" in err and "the recipe's labels are 2 (joy, anger)" in err
    err = one_line_error(capsys, main(base + [f"model={classifier}", "labels=[joy, sadness, anger]"]))
    assert "config.json: sadness, joy, anger)" in err and "are 3 (joy, sadness, anger)" in err  # same count, rows that mean others
    with pytest.raises(ValueError, match="head has 3 labels"):  # --debug: the exception itself
        main(base + [f"model={classifier}", "labels=[joy, anger]", "--debug"])
    capsys.readouterr()
    teacherless = [f"train_file={tmp_path / 'data' / 'emotion.txt'}", "task=text-classification",
                   f"output_dir={tmp_path / 'd'}", "max_steps=1"]
    assert "is not a directory" in one_line_error(capsys, D.main(teacherless + [f"teacher={missing}"]))
    teacher = f"teacher={classifier}"
    err = one_line_error(capsys, D.main(teacherless + [teacher, "student_layers=[0, 99]"]))
    assert "student_layers [0, 99]: the teacher has 2 layers, numbered 0..1 (99 out of range)" in err
    for layers, why in (("[]", "empty"), ("[1, 0]", "ascending"), ("[0, 0]", "at most once")):
        assert why in one_line_error(capsys, D.main(teacherless + [teacher, f"student_layers={layers}"]))
