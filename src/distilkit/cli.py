"""The `distilkit` command. Each subcommand is a thin shell over the package: argument parsing
here, work in the modules. Imports are lazy so that `distilkit --help` answers at once."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from .config import MODES

# Subcommands implemented in their own modules: name -> (module with main(argv), one-line help).
DELEGATED = {
    "serve": ("distilkit.serve.__main__", "start the HTTP endpoint (model-catalog JSON, dynamic batching)"),
    "batch": ("distilkit.batch", "score files (JSONL/CSV/Parquet), resumably"),
    "finetune": ("distilkit.train.finetune", "fine-tune from a YAML recipe"),
    "evaluate": ("distilkit.evaluate", "official metrics: SQuAD EM/F1, entity F1, accuracy, fill-mask"),
    "distill": ("distilkit.train.distill", "distil a student from a teacher"),
    "export": ("distilkit.export", "export a model to ONNX"),
    "bench": ("distilkit.bench", "measure each run mode's speed for a model on this machine"),
}
TASK_NAMES = ["question-answering", "fill-mask", "text-classification", "token-classification", "feature-extraction",
              "sentence-embedding", "text-embedding", "zero-shot-classification", "text-ranking"]


def _spec(module: str) -> bool:
    """Whether a subcommand's module is installed, without importing anything: find_spec on a
    submodule would import its parent packages (distilkit.train imports torch)."""
    from pathlib import Path

    rel = Path(*module.split(".")[1:])
    root = Path(__file__).parent
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilkit",
        description="Fast inference, serving, fine-tuning and distillation for the DistilBERT family.",
    )
    parser.add_argument("--version", action="version", version=f"distilkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("predict", help="answer one request (model-catalog or pipeline JSON) from a file or stdin",
                       description="Read a request in the model-catalog JSON shape (e.g. "
                                   '{"input_data": {"question": ..., "context": ...}} or '
                                   '{"inputs": {"input_string": [...]}, "parameters": {...}}) or plain pipeline '
                                   "JSON, and print the response JSON.")
    p.add_argument("task", choices=TASK_NAMES, help="the task")
    p.add_argument("--model", help="local directory or hub id (default: the task's seed checkpoint, "
                                   "or $DISTILKIT_MODEL)")
    p.add_argument("--input", help="request JSON file (default: stdin)")
    p.add_argument("--params", help="JSON object of task parameters, merged over the request's")
    p.add_argument("--mode", default="fp32", choices=MODES, help="run mode (default fp32)")
    p.add_argument("--full", action="store_true",
                   help="question answering: full {score, start, end, answer} objects instead of answer strings")
    p.add_argument("--debug", action="store_true", help="on an error, the traceback too")
    for name, (module, help_text) in DELEGATED.items():
        if _spec(module):
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED and _spec(DELEGATED[argv[0]][0]):
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]) or 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict":
        return predict(args)
    parser.print_help()
    return 0


def _fail(message: str, error_type: str, field: str | None = None) -> int:
    body = {"error": message, "error_type": error_type}
    if field:
        body["field"] = field
    print(json.dumps(body), file=sys.stderr)
    return 2


def predict(args: argparse.Namespace) -> int:
    if not args.input and sys.stdin.isatty():  # else a user who forgot --input waits on a silent prompt
        print("distilkit predict: reading the request JSON from stdin (end it with Ctrl-D), or pass --input FILE",
              file=sys.stderr)
    try:
        raw = open(args.input, encoding="utf-8").read() if args.input else sys.stdin.read()
    except OSError as e:
        return _fail(f"cannot read {args.input}: {e.strerror}", "input_error", "input")
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as e:
        return _fail(f"the request is not valid JSON: {e}", "invalid_json")
    try:
        extra = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as e:
        return _fail(f"--params is not valid JSON: {e}", "invalid_json", "params")
    if not isinstance(extra, dict):
        return _fail("--params must be a JSON object", "validation_error", "params")
    if args.full:
        extra["return_full"] = True

    from .hub import CheckpointError, ModelNotFoundError
    from .errors import InputError
    from .pipelines import pipeline
    from .schemas import format_response, parse_request

    if extra and isinstance(body, dict):
        body["parameters"] = {**(body.get("parameters") or {}), **extra}
    try:
        inputs, params, shape = parse_request(args.task, body)
        task = pipeline(args.task, model=args.model, mode=args.mode)
        results = task.run(inputs, **params)
        print(json.dumps(format_response(args.task, results, shape, params), ensure_ascii=False, indent=2))
    except InputError as e:
        if args.debug:
            raise
        return _fail(str(e), "validation_error", e.field)
    except (ModelNotFoundError, CheckpointError, OSError, ValueError) as e:  # a model folder that cannot load
        if args.debug:
            raise
        return _fail(str(e), "model_error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
