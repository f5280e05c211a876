"""`distilkit distill`: the DistilBERT recipe on the shared training loop.

General distillation (task: masked-lm) trains a student on raw text with
a_ce * T^2 * KL(teacher || student) over every real token + a_mlm * MLM + a_cos * cosine of the last
hidden states; the text is tokenized once into memory-mapped shards. Task distillation (task:
text-classification | token-classification | question-answering) trains on
a_task * task loss + a_ce * T^2 * KL on the task logits, reusing the fine-tuning data pipeline.
The teacher runs without gradients (bf16 where the hardware has it). The student starts from
chosen teacher layers (student_layers), from an existing checkpoint (student), or fresh.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from ..progress import progress as make_progress
from .distill_losses import hidden_cosine, masked_lm, soft_target_kl, span_kl
from .finetune import DEFAULT_METRICS, FinetuneConfig, build_features, flat_metrics, read_split, recipe_main, score
from .loop import fit, init_distributed, seed_everything
from .losses import forward, sequence_loss, span_loss, token_loss
from .rundir import read_json, run_recipe

TASK_HEADS = {
    "masked-lm": "masked-lm",
    "text-classification": "sequence-classification",
    "token-classification": "token-classification",
    "question-answering": "question-answering",
}


class DistillConfig(FinetuneConfig):
    """Fine-tuning's options (data, loop) plus the teacher, the student and the loss weights.
    `model` is unused: the student comes from `teacher` + `student_layers`, or from `student`."""

    task: Literal["masked-lm", "text-classification", "token-classification", "question-answering"] = Field(
        "masked-lm", description="masked-lm (general distillation) or a fine-tuning task (task distillation)")
    teacher: str = Field(..., min_length=1, description="the teacher checkpoint (for task distillation: "
                         "fine-tuned on the task); required")
    student: str | None = Field(None, description="start from this checkpoint instead of teacher layers")
    student_layers: list[int] | None = Field(None, description="teacher layers to copy, ascending, e.g. "
                                             "[0, 2, 4, 7, 9, 11]")
    student_n_layers: int | None = Field(None, ge=1, description="or a count (every other layer); default half "
                                         "the teacher")
    student_family: Literal["distilbert", "bert", "roberta"] | None = Field(
        None, description="distilbert: drop token types (BERT teacher); default the teacher's")
    temperature: float = Field(2.0, gt=0)
    alpha_ce: float | None = Field(None, ge=0, description="soft-target KL weight; default 5.0 general, 0.5 task "
                                   "(the papers' recipes)")
    alpha_mlm: float = Field(2.0, ge=0, description="general: masked-LM loss weight")
    alpha_cos: float = Field(1.0, ge=0, description="general: hidden-state cosine weight")
    alpha_task: float = Field(0.5, ge=0, description="task: the hard-label task loss weight")
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    mlm_smoothing: float = Field(0.7, ge=0, description="masking weights counts ** -smoothing, as DistilBERT; "
                                 "0: uniform")
    restrict_ce_to_mask: bool = Field(False, description="general: KL only on the masked tokens (cheaper) "
                                      "instead of all")
    text_column: str = Field("text", description="general: the text column of JSONL/CSV files")
    shards_dir: str | None = Field(None, description="general: where the token shards go (default "
                                   "output_dir/shards)")
    teacher_precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 where supported")
    model: str = Field("", description="unused by distillation")

    @field_validator("student_layers")
    @classmethod
    def _layers(cls, layers: list[int] | None) -> list[int] | None:
        if layers is None:
            return None
        if not layers:
            raise ValueError("empty: name at least one teacher layer, or leave the option out")
        if any(i < 0 for i in layers):
            raise ValueError("teacher layers are numbered from 0")
        if len(set(layers)) != len(layers):
            raise ValueError("each teacher layer at most once")
        if layers != sorted(layers):
            raise ValueError("list the teacher layers in ascending order")
        return layers

    @model_validator(mode="after")
    def _derive(self) -> "DistillConfig":
        if self.alpha_ce is None:
            self.alpha_ce = 5.0 if self.task == "masked-lm" else 0.5
        if self.metric is None and self.task != "masked-lm":
            self.metric = DEFAULT_METRICS[self.task]
        return self


# ---------------------------------------------------------------------- the teacher
def teacher_autocast(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if _has_bf16(device) else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"teacher_precision must be auto, fp32 or bf16, got {precision!r}")
    return contextlib.nullcontext()


def _has_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Teacher:
    """The frozen teacher: called under no_grad (its outputs are loss targets, so they must be
    ordinary tensors, not inference-mode ones), in bf16 where the hardware has it."""

    def __init__(self, model: nn.Module, precision: str):
        self.model = model.eval().requires_grad_(False)
        self.precision = precision

    def __call__(self, batch: dict[str, Tensor], **kwargs):
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        with torch.no_grad(), teacher_autocast(self.precision, device):
            out = forward(self.model, batch, **kwargs)
        return out


# ---------------------------------------------------------------------- loss functions
def general_loss(teacher: Teacher, cfg: DistillConfig):
    """L = a_ce T^2 KL + a_mlm MLM + a_cos (1 - cos), over the batch's real (or masked) tokens."""

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]):
        mask = batch["attention_mask"].bool()
        labels = batch["labels"]
        rows = (labels != -100) if cfg.restrict_ce_to_mask else mask
        positions = torch.nonzero(rows.reshape(-1)).squeeze(1)  # vocab projection only where a loss needs it
        s = forward(model, batch, positions=positions, output_hidden_states=True)
        t = teacher(batch, positions=positions, output_hidden_states=True)
        ce = soft_target_kl(s.logits, t.logits.float(), cfg.temperature)
        mlm = masked_lm(s.logits[labels.reshape(-1)[positions] != -100], labels[labels != -100])
        cos = hidden_cosine(s.last_hidden_state, t.last_hidden_state.float(), mask)
        loss = cfg.alpha_ce * ce + cfg.alpha_mlm * mlm + cfg.alpha_cos * cos
        return loss, {"loss_ce": ce.item(), "loss_mlm": mlm.item(), "loss_cos": cos.item()}

    return loss_fn


def task_loss(teacher: Teacher, cfg: DistillConfig):
    """L = a_task * task loss + a_ce * T^2 KL on the task logits (QA: mean of start and end)."""

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]):
        s = forward(model, batch).logits
        mask = batch["attention_mask"].bool()
        if cfg.task == "text-classification":
            hard = sequence_loss(s, batch["labels"])
            kl = lambda t: soft_target_kl(s, t, cfg.temperature)  # noqa: E731
        elif cfg.task == "token-classification":
            hard = token_loss(s, batch["labels"])
            kl = lambda t: soft_target_kl(s, t, cfg.temperature, mask)  # noqa: E731
        else:
            hard = span_loss(s, batch["start_positions"], batch["end_positions"])
            kl = lambda t: span_kl(s, t, cfg.temperature, mask)  # noqa: E731
        # alpha_ce = 0 is the student fine-tuned without distillation (the baseline): no teacher call.
        ce = kl(teacher(batch).logits.float()) if cfg.alpha_ce else hard.new_zeros(())
        loss = cfg.alpha_task * hard + cfg.alpha_ce * ce
        return loss, {"loss_task": hard.item(), "loss_ce": ce.item()}

    return loss_fn


# ---------------------------------------------------------------------- data for general distillation
def iter_texts(path: Path, column: str) -> Iterator[str]:
    """Texts streamed from .txt lines or a JSONL column (gzipped or not): never all in memory."""
    opener = (lambda: io.TextIOWrapper(gzip.open(path), encoding="utf-8")) if path.suffix == ".gz" else \
        (lambda: open(path, encoding="utf-8"))
    jsonl = path.name.lower().removesuffix(".gz").endswith((".jsonl", ".json"))
    with opener() as f:
        for line in f:
            if not line.strip():
                continue
            yield str(json.loads(line)[column]) if jsonl else line.rstrip("\r\n")


def mlm_collate(tokenizer, vocab_size: int, cfg: DistillConfig, token_probs: np.ndarray | None):
    from ..data.mlm import mask_tokens

    special = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if i is not None]

    def collate(seqs: list[np.ndarray]) -> dict[str, Tensor]:
        T = max(len(s) for s in seqs)
        ids = np.full((len(seqs), T), tokenizer.pad_token_id, dtype=np.int64)
        attn = np.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, :len(s)], attn[r, :len(s)] = s, 1
        # Masks drawn from torch's RNG, which checkpoints restore: a resumed run masks identically.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        masked, labels = mask_tokens(ids, attn, special, tokenizer.mask_token_id, vocab_size, rng,
                                     cfg.mlm_probability, token_probs)
        return {"input_ids": torch.from_numpy(masked), "attention_mask": torch.from_numpy(attn),
                "labels": torch.from_numpy(labels)}

    return collate


def general_data(cfg: DistillConfig, tokenizer, vocab_size: int):
    from ..data.mlm import TokenShards, build_shards, smoothed_token_probs

    d = init_distributed()
    src = Path(cfg.data_path(cfg.train_file))
    shards_dir = Path(cfg.shards_dir or Path(cfg.output_dir) / "shards").expanduser()
    stamp = {"source": str(src.resolve()), "size": src.stat().st_size, "mtime": src.stat().st_mtime,
             "max_length": cfg.max_seq_len, "vocab_size": vocab_size, "column": cfg.text_column}
    if d.main and read_json(shards_dir / "source.json") != stamp:
        build_shards(iter_texts(src, cfg.text_column), tokenizer, shards_dir, cfg.max_seq_len)
        (shards_dir / "source.json").write_text(json.dumps(stamp))
    if dist.is_initialized():
        dist.barrier()
    shards = TokenShards(shards_dir)
    probs = None
    if cfg.mlm_smoothing > 0:
        special = [i for i in (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) if i is not None]
        probs = smoothed_token_probs(shards.token_counts(vocab_size), special, cfg.mlm_smoothing)
    return shards, probs


# ---------------------------------------------------------------------- the recipe
def build_student(cfg: DistillConfig, teacher: nn.Module, head: str, id2label: dict[int, str] | None) -> nn.Module:
    from ..checkpoint import load_model
    from .student import make_student

    if cfg.student:
        from ..checkpoint import resolve
        from .finetune import check_head

        path = resolve(cfg.student)
        if id2label:
            check_head(path, head, [id2label[i] for i in sorted(id2label)], "the teacher's labels")
        return load_model(path, head=head, id2label=id2label, fresh_head=True)
    layers = cfg.student_layers if cfg.student_layers is not None else cfg.student_n_layers
    return make_student(teacher, layers, family=cfg.student_family)


def distill(cfg: DistillConfig, resume: bool | str = False, allow_changes: bool = False) -> dict[str, Any]:
    """Run the recipe. Returns {"output_dir", "steps", ..., "comparison"} (teacher vs student).
    resume and allow_changes as for `finetune`."""
    return run_recipe(cfg, resume, allow_changes, "distill_config.json", _distill)


def _distill(cfg: DistillConfig, out: Path, d, resume: Path | bool, allow_changes: bool) -> dict[str, Any]:
    from ..checkpoint import load_model, resolve, save_pretrained
    from ..data.collate import feature_lengths, pad_batch
    from ..pipelines import pipeline
    from ..tokenizer import Tokenizer

    seed_everything(cfg.seed)
    head = TASK_HEADS[cfg.task]
    teacher_model = load_model(cfg.teacher, head=head)
    tokenizer = Tokenizer.from_pretrained(resolve(cfg.tokenizer or cfg.teacher))
    id2label = dict(teacher_model.cfg.id2label) if cfg.task in ("text-classification", "token-classification") else None
    student = build_student(cfg, teacher_model, head, id2label).train()
    if cfg.dropout is not None:
        from .finetune import set_dropout

        set_dropout(student, cfg.dropout)
    if student.encoder.pooler is not None and head != "sequence-classification":
        student.encoder.pooler.requires_grad_(False)  # unused by this head (and DDP rejects unused parameters)
    teacher = Teacher(teacher_model, cfg.teacher_precision)

    valid = None
    if cfg.task == "masked-lm":
        features, token_probs = general_data(cfg, tokenizer, teacher_model.cfg.vocab_size)
        lengths = features.lengths().tolist()
        collate = mlm_collate(tokenizer, teacher_model.cfg.vocab_size, cfg, token_probs)
        loss_fn = general_loss(teacher, cfg)
        evaluate = None
    else:
        train = read_split(cfg, cfg.train_file, cfg.train_range, cfg.labels)
        valid = read_split(cfg, cfg.valid_file, cfg.valid_range, cfg.labels)
        label2id = {v: k for k, v in (id2label or {}).items()}
        features = build_features(cfg, tokenizer, train, label2id, student.cfg.type_vocab_size > 0)
        lengths = feature_lengths(features)

        def collate(batch):
            return pad_batch(batch, tokenizer.pad_token_id)

        loss_fn = task_loss(teacher, cfg)

        def evaluate(m: nn.Module) -> dict[str, float]:
            return flat_metrics(score(cfg, pipeline(cfg.task, model=m, tokenizer=tokenizer), valid))

    result = fit(student, features, collate, loss_fn, cfg, lengths=lengths,
                 evaluate=evaluate if valid else None, save=lambda m, p: save_pretrained(m, p, tokenizer),
                 resume=resume, allow_changes=allow_changes)
    final = result.best_dir or out / "final"
    if result.best_dir is None and d.main:
        save_pretrained(_unwrap(student), final, tokenizer)
    report: dict[str, Any] = {"output_dir": str(out), "student": str(final), "steps": result.step,
                              "best_metric": result.best_metric, "losses": result.losses[-5:]}
    if d.main and cfg.task != "masked-lm":
        test = read_split(cfg, cfg.test_file, cfg.test_range, cfg.labels) or valid
        if test:
            report["comparison"] = compare(cfg, resolve(cfg.teacher), final, test)
            (out / "comparison.json").write_text(json.dumps(report["comparison"], indent=2) + "\n")
            print(format_comparison(report["comparison"]), file=sys.stderr)
    return report


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def compare(cfg: DistillConfig, teacher_dir: Path, student_dir: Path, records: list[dict]) -> dict[str, Any]:
    """Teacher vs student on the same records and CPU: parameters, throughput, latency, task score."""
    from ..pipelines import pipeline

    rows = {}
    for name, path in (("teacher", teacher_dir), ("student", student_dir)):
        task = pipeline(cfg.task, model=path, device="cpu")
        n_params = count_parameters(path)
        with make_progress(total=len(records), desc=f"compare {name}", unit="examples",
                           mode=None if cfg.progress else "none") as bar:
            t = time.perf_counter()
            metrics = score(cfg, task, records, bar)
            seconds = time.perf_counter() - t
        one = records[0]
        single = {"question": one["question"], "context": one["context"]} if cfg.task == "question-answering" else \
            (one["text"] if "text" in one else " ".join(one["tokens"]))
        task.run([single])
        lat = []
        for _ in range(5):
            t1 = time.perf_counter()
            task.run([single])
            lat.append(time.perf_counter() - t1)
        rows[name] = {"parameters": n_params, "examples_per_s": len(records) / seconds,
                      "latency_ms": 1000 * float(np.median(lat)), "metrics": flat_metrics(metrics)}
    t, s = rows["teacher"], rows["student"]
    key = cfg.metric if cfg.metric in s["metrics"] else next(iter(s["metrics"]))
    rows["student_vs_teacher"] = {
        "speedup": s["examples_per_s"] / t["examples_per_s"],
        "parameters": s["parameters"] / t["parameters"],
        key: s["metrics"][key] / t["metrics"][key] if t["metrics"][key] else None,
    }
    return rows


def count_parameters(path: Path) -> int:
    """The checkpoint's own parameters (tied weights once), read from a fresh load: a pipeline's
    model is a runtime view whose prepacked linear layers are no longer parameters."""
    from ..checkpoint import load_model

    return sum(p.numel() for p in load_model(path).parameters())


def format_comparison(c: dict[str, Any]) -> str:
    t, s = c["teacher"], c["student"]
    metric = [k for k in c["student_vs_teacher"] if k not in ("speedup", "parameters")][0]
    lines = [f"{'':10s} {'parameters':>12s} {'examples/s':>11s} {'latency ms':>11s} {metric:>12s}"]
    for name, r in (("teacher", t), ("student", s)):
        lines.append(f"{name:10s} {r['parameters']:12,d} {r['examples_per_s']:11.1f} {r['latency_ms']:11.1f} "
                     f"{r['metrics'][metric]:12.4f}")
    v = c["student_vs_teacher"]
    lines.append(f"student/teacher: {v['parameters']:.2f}x parameters, {v['speedup']:.2f}x throughput, "
                 f"{v[metric]:.3f} of the teacher's {metric}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    return recipe_main(argv, "distilkit distill", "Distil a student from a teacher: a YAML recipe "
                       "(configs/distill/*.yaml) and key=value overrides.", DistillConfig, distill)


if __name__ == "__main__":
    sys.exit(main())
