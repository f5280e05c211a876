"""Checkpoints of the training loop: the model (HF format for distilkit models), optimizer,
scheduler, per-process RNG state and data position, written into a temporary directory and renamed
into place (trainer_state.json last, so its presence marks a complete checkpoint); and what a
resume puts back.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from .loop import Dist
    from .options import TrainOptions


def default_save(model: nn.Module, path: Path) -> None:
    """HF format for distilkit models (transformers loads it), a plain state dict otherwise."""
    from ..heads import Model

    if isinstance(model, Model):
        from ..checkpoint import save_pretrained

        save_pretrained(model, path)
    else:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path / "weights.safetensors"))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load what `default_save` (or save_pretrained) wrote in `path` into `model`, in place."""
    from ..heads import Model

    if isinstance(model, Model) and (path / "config.json").is_file():
        from ..checkpoint import load_model

        state = load_model(path, head=model.head_name).state_dict()
    else:
        from safetensors.torch import load_file

        state = load_file(str(path / "weights.safetensors"))
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob("step-*/trainer_state.json"))
    return found[-1].parent if found else None


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def replace_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling and swap it in, so a crash never leaves half a directory."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def apply_options(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                   o: TrainOptions) -> None:
    """A restored optimizer and scheduler bring back the saved lr and weight decay: put this run's
    back, so that what the options say is what trains (the same values on a plain resume)."""
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = o.lr
        if group.get("decays", group["weight_decay"] != 0):  # older checkpoints lack the mark
            group["weight_decay"] = o.weight_decay
        scheduler.base_lrs[i] = o.lr
        group["lr"] = o.lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def save_checkpoint(model, optimizer, scheduler, scaler, save, out_dir: Path, d: Dist, step: int, total: int,
                     epoch: int, position: int, best, best_step, options: TrainOptions) -> None:
    keep = options.keep_checkpoints
    root = out_dir / "checkpoints"
    target = root / f"step-{step:07d}"
    tmp = root / f"step-{step:07d}.tmp"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save(model, tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "optimizer.pt")
    barrier(d)
    torch.save(rng_state(), tmp / f"rng_state_{d.rank}.pt")
    barrier(d)
    if d.main:
        # trainer_state.json last: its presence marks a complete checkpoint.
        state = {"step": step, "total_steps": total, "epoch": epoch, "position": position, "world_size": d.world,
                 "best_metric": best, "best_step": best_step,
                 # What this checkpoint was trained with: a resume refuses other options (rundir.start).
                 "options": options.to_dict() if hasattr(options, "to_dict") else None}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        done = sorted(p.parent for p in root.glob("step-*/trainer_state.json"))
        for old in done[: max(0, len(done) - max(1, keep))]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
