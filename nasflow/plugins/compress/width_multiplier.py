"""The `width-multiplier` compressor: the parent's every channel width scaled by `alpha`, retrained.

The baseline MorphNet compares itself against: a uniformly thinner (or wider) copy of the
network, trained from scratch with the run's training recipe (`train.config`), so it is judged
exactly as the parent was. The rounding is `nasflow.arch.scaling`'s (multiples of `divisor`).
Torch loads only when a model is compressed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ...arch.scaling import DEFAULT_DIVISOR
from ...hookspecs import hookimpl
from ...plugin_api import Compressor, PluginOptions

if TYPE_CHECKING:
    from ...plugin_api import CompressContext, CompressResult


class WidthMultiplierOptions(PluginOptions):
    alpha: float = Field(0.5, gt=0, description="factor applied to every channel width (stem, blocks, head)")
    divisor: int = Field(DEFAULT_DIVISOR, ge=1, description="widths round to a multiple of this (MobileNet's rule)")
    epochs: int | None = Field(None, ge=1, description="training epochs of the scaled network (null: train.config.epochs)")


class WidthMultiplierCompressor(Compressor):
    """A uniformly scaled copy of the parent, trained from scratch with the same recipe."""

    name = "width-multiplier"
    description = "width multiplier: every channel width x alpha (rounded to a divisor), retrained from scratch"
    Options = WidthMultiplierOptions

    def compress(self, ctx: "CompressContext") -> "CompressResult":
        import torch

        from ...arch import build_model, count_macs, count_params, format_arch
        from ...arch.scaling import scale_width
        from ...errors import PluginError
        from ...plugin_api import CompressResult
        from ...train import train_model

        opts: WidthMultiplierOptions = self.options  # type: ignore[assignment]
        arch = scale_width(ctx.arch, opts.alpha, opts.divisor)
        image_size = (int(ctx.input_shape[-2]), int(ctx.input_shape[-1]))
        data = ctx.dataset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.train_config.seed)
            model = build_model(arch, data.in_channels, data.num_classes)
        epochs = opts.epochs or ctx.train_config.epochs

        def progress(done: int, total: int, _loss: float) -> None:
            if ctx.progress is not None:
                ctx.progress("retrain", done, total)

        result = train_model(model, data, ctx.train_config, epochs=epochs, progress=progress, device=ctx.device, amp=ctx.amp)
        if result.val_accuracy != result.val_accuracy:  # NaN: diverged
            raise PluginError(f"width-multiplier: training diverged (loss {result.train_loss}); lower train.config.lr")
        stats = {
            "alpha": opts.alpha,
            "divisor": opts.divisor,
            "epochs": epochs,
            "macs_before": count_macs(ctx.arch, data.in_channels, data.num_classes, image_size),
            "macs_after": count_macs(arch, data.in_channels, data.num_classes, image_size),
            "params_before": count_params(ctx.model),
            "params_after": count_params(model),
            "child_arch": format_arch(arch),
        }
        return CompressResult(model.cpu().eval(), arch, result.val_accuracy, result.val_loss, stats)


@hookimpl
def nasflow_compressors():
    return [WidthMultiplierCompressor]
