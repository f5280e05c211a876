"""What a training run logs: metrics.jsonl (+ TensorBoard when installed) and the curves PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Recorder:
    """metrics.jsonl (+ TensorBoard) on the main process; one record per line, `type` train or eval."""

    def __init__(self, output_dir: Path, main: bool, tensorboard: bool, resume_step: int | None):
        self.main = main
        self.file = output_dir / "metrics.jsonl"
        self.writer = None
        if not main:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.file.exists():
            # A resumed run rewrites what came after its checkpoint, so the file reads as one run.
            kept = [line for line in self.file.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            self.file.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.file.write_text("")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the tensorboard package is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with self.file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("type", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record['type']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(metrics_file: Path, out: Path) -> Path | None:
    """Training loss and evaluation metrics against steps, as a PNG (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if any("eval_loss" in r for r in evals):
        axes[0].plot([r["step"] for r in evals if "eval_loss" in r], [r["eval_loss"] for r in evals if "eval_loss" in r],
                     "o-", label="eval loss")
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    axes[0].legend()
    # Scores only: counts and thresholds (support, HasAns_total, best_f1_thresh...) would squash the axis.
    skip = ("support", "total", "thresh", "seconds", "count", "tokens", "texts")
    names = [k for k in (evals[0] if evals else {}) if k not in ("type", "step", "epoch", "eval_loss")
             and not any(word in k for word in skip) and isinstance(evals[0][k], (int, float))]
    for name in names[:6]:
        axes[1].plot([r["step"] for r in evals], [r[name] for r in evals], "o-", label=name)
    axes[1].set_title("evaluation")
    parts = [k for k in (train[-1] if train else {}) if k.startswith("loss_")]
    if not names and parts:  # no evaluation (general distillation): the loss's parts, each on its own scale
        for name in parts:
            first = train[0][name] or 1.0
            axes[1].plot([r["step"] for r in train], [r[name] / first for r in train], label=f"{name} (x {first:.3g})")
        axes[1].set_title("loss parts, relative to their first value")
        names = parts
    axes[1].set_xlabel("step")
    if names:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


