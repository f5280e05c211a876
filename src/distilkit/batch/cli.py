"""`distilkit batch` / `python -m distilkit.batch`: flags made from `run_batch`'s signature, one-line
errors (exit 2), and signals: SIGINT and SIGTERM stop the job where it is, say how far it got and
how to resume (the committed parts are kept), then end the process as that signal would."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import typing
from typing import Annotated, Any, Literal, Sequence

from ..errors import InputError
from .job import BatchError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so the job unwinds (locks released, the
    threads stopped after their current write) and reports where it stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    """Flags made from `run_batch`'s signature: names, types, defaults, choices and help."""
    from . import run_batch

    parser = argparse.ArgumentParser(
        prog="distilkit batch",
        description="Score JSONL, CSV or Parquet files with one task: length-sorted token-budget batches, "
                    "a progress display, bad records to an errors file, and resume: rerun the same "
                    "command after a kill and it continues where it stopped.")
    hints = typing.get_type_hints(run_batch, include_extras=True)
    for name, param in inspect.signature(run_batch).parameters.items():
        hint = hints[name]
        help_text = hint.__metadata__[0] if typing.get_origin(hint) is Annotated else None
        base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
        flag = "--" + name.replace("_", "-")
        required = param.default is inspect.Parameter.empty
        kwargs: dict[str, Any] = {"help": help_text, "dest": name}
        if not required:
            kwargs["default"] = param.default
            if param.default not in (None, False) and "default" not in (help_text or ""):
                kwargs["help"] = f"{help_text} (default: {param.default})"
        else:
            kwargs["required"] = True
        options = [a for a in typing.get_args(base) if a is not type(None)] or [base]
        if base is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(base) is Literal:
            kwargs["choices"] = typing.get_args(base)
        elif any(typing.get_origin(o) is list for o in options):
            kwargs["nargs"] = "+"
        elif dict in options:
            kwargs["type"] = _json_object
            kwargs["metavar"] = "JSON"
        elif options[0] in (int, float):
            kwargs["type"] = options[0]
        parser.add_argument(flag, **kwargs)
    return parser


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    from . import run_batch
    from ..checkpoint import CheckpointError, ModelNotFoundError

    args = build_parser().parse_args(argv)
    previous = None
    if threading_is_main():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        report = run_batch(**vars(args))
    except (BatchError, InputError, ModelNotFoundError, CheckpointError, FileNotFoundError, ImportError,
            ValueError) as e:
        print(f"distilkit batch: error: {e}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"distilkit batch: stopped by {e}", file=sys.stderr)
        sys.stderr.flush()
        signal.signal(e.signum, signal.SIG_DFL)  # end as SIGTERM would, for whoever supervises us
        os.kill(os.getpid(), e.signum)
        return 128 + e.signum  # pragma: no cover - the signal ends the process first
    except KeyboardInterrupt:
        print("distilkit batch: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 1 if report.errors and not report.records else 0


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
