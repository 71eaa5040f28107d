"""Training inside a compressor: progress reported as a named step, a diverged loss a clear error."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...errors import PluginError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ...plugin_api import CompressContext
    from ...train import TrainResult


def report(ctx: "CompressContext", step: str, done: int, total: int) -> None:
    if ctx.progress is not None:
        ctx.progress(step, done, total)


def train_step(
    model: "nn.Module", ctx: "CompressContext", epochs: int, step: str, diverged: str,
    extra_loss: Callable[["nn.Module"], "torch.Tensor"] | None = None,
) -> "TrainResult":
    """`epochs` of `ctx.train_config` on `model` (in place), reported as `step`; `diverged` is the
    error's text when the loss is not finite (the loss is appended)."""
    from ...train import train_model

    report(ctx, step, 0, epochs)
    result = train_model(
        model, ctx.dataset, ctx.train_config, epochs=epochs, extra_loss=extra_loss,
        progress=lambda done, total, _loss: report(ctx, step, done, total), device=ctx.device, amp=ctx.amp,
    )
    if not math.isfinite(result.train_loss):
        raise PluginError(f"{diverged} (loss {result.train_loss})")
    return result
