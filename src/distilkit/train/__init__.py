"""Training: the shared loop (`fit`), task losses and the fine-tuning recipe.

`fit(model, features, collate, loss_fn, options)` trains with any `loss_fn(model, batch) ->
(loss, logs)`; fine-tuning passes the task losses of `losses.py`, distillation one that also
runs a teacher. Options are dataclasses (`TrainOptions`, extended by `FinetuneConfig`).
"""

from .loop import TrainOptions, TrainResult, build_config, fit, init_distributed

__all__ = ["TrainOptions", "TrainResult", "build_config", "fit", "init_distributed"]
