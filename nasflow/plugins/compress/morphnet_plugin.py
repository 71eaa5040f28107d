"""The `morphnet` compressor plugin: its options and class; the torch code loads only when a model is compressed.

The steps themselves live in `morphnet.py`, so listing plugins or validating a spec never imports
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ...hookspecs import hookimpl
from ...plugin_api import Compressor, PluginOptions

if TYPE_CHECKING:
    from ...plugin_api import CompressContext, CompressResult


class MorphNetOptions(PluginOptions):
    target: Literal["flops", "size", "latency"] = Field(
        "flops", description="resource the regulariser weights channels by (and a budget counts): MACs ('flops'), "
        "parameters ('size') or latency on latency_device, from a width-aware model fitted to its LUT ('latency')"
    )
    latency_device: str | None = Field(None, description="device of the latency target; default objectives.device")
    strength: float = Field(
        0.1,
        ge=0,
        description=(
            "how far the L1 penalty alone would move the BN gate of a channel of average cost over the whole "
            "regularisation phase (lr x steps x the per-step coefficient); costlier channels in proportion. The "
            "same value acts alike on short and long phases"
        ),
    )
    threshold: float = Field(1e-2, ge=0, description="channels whose BN |gamma| is below this are pruned")
    reg_epochs: int = Field(3, ge=0, description="training epochs with the regulariser (0: prune as trained)")
    finetune_epochs: int = Field(2, ge=0, description="training epochs of the child without the regulariser")
    width_multiplier: float = Field(
        1.0, gt=0, description="MorphNet's expand step: scale every surviving prunable width (1.0 = shrink only)"
    )
    min_channels: int | None = Field(
        None, ge=1, description="channels a group keeps at least (unless its block vanishes); null: a group without a "
        "residual path whose channels all fall below the threshold is an error naming it (with N: it keeps its N strongest)"
    )
    budget: float | None = Field(
        None,
        gt=0,
        description=(
            "MorphNet's expand step to a resource budget: the uniform width multiplier of the shrunk network is "
            "found by bisection so its `target` count (MACs or params) is the largest within the budget; "
            "null: expand by `width_multiplier` instead"
        ),
    )
    budget_kind: Literal["relative", "absolute"] = Field(
        "relative", description="budget as a share of the seed network's count (relative) or as a count (absolute)"
    )
    cycles: int = Field(
        1, ge=1, description="shrink -> expand cycles, each regularising, shrinking, expanding and fine-tuning the "
        "previous cycle's network; every cycle's network is recorded, the last is the stage's output"
    )

    @model_validator(mode="after")
    def _one_expand_rule(self) -> "MorphNetOptions":
        if self.budget is not None and self.width_multiplier != 1.0:
            raise ValueError("set either budget (the multiplier is then found) or width_multiplier, not both")
        return self


class MorphNetCompressor(Compressor):
    """Shrink a trained model where a cost-weighted sparsity penalty says channels are not worth their resource."""

    name = "morphnet"
    description = "MorphNet: FLOP/size-weighted L1 on BN gates, prune dead channels and blocks, expand, fine-tune"
    Options = MorphNetOptions

    @classmethod
    def latency_device(cls, options: MorphNetOptions, objective_device: str) -> str | None:
        return (options.latency_device or objective_device) if options.target == "latency" else None

    def compress(self, ctx: CompressContext) -> CompressResult:
        from .morphnet import compress

        return compress(self.options, ctx)  # type: ignore[arg-type]


@hookimpl
def nasflow_compressors():
    return [MorphNetCompressor]
