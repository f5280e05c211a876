"""Training: the shared loop (`fit`), task losses and the fine-tuning recipe.

`fit(model, features, collate, loss_fn, options)` trains with any `loss_fn(model, batch) ->
(loss, logs)`; fine-tuning passes the task losses of `losses.py`, distillation one that also
runs a teacher. Options are pydantic models (`TrainOptions`, extended by `FinetuneConfig`).
"""

from .loop import TrainResult, fit, init_distributed
from .options import TrainOptions, build_config

__all__ = ["TrainOptions", "TrainResult", "build_config", "fit", "init_distributed"]
