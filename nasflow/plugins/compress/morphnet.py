"""MorphNet's steps behind the `morphnet` compressor: resource-weighted L1 on BN gates, shrink, expand, fine-tune.

After MorphNet (Gordon et al., CVPR 2018). Prunable channel groups are the expanded (mid) channels
of every inverted-residual block that has an expand conv, gated by the depthwise BN scale, and the
head channels, gated by the head BN scale. Block input/output widths stay fixed, so the cost of
one channel of a group (MACs or parameters, given its neighbours) is exact and constant.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import PluginError
from ...plugin_api import CompressContext, CompressResult
from ...space import (
    Arch,
    ArchNet,
    Block,
    InvertedResidual,
    build_model,
    count_arch_params,
    count_macs,
    count_params,
    format_arch,
    mid_channels,
)
from ...train import TrainResult, evaluate, train_model
from .morphnet_plugin import MorphNetCompressor, MorphNetOptions  # noqa: F401  (the plugin, re-exported)

# ---------------------------------------------------------------- channel groups


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that live or die together: one block's mid channels (block index) or the head (None)."""

    block: int | None
    width: int
    in_channels: int  # of the block; a mid width equal to it would drop the expand conv
    can_vanish: bool  # residual blocks may turn into skip layers

    @property
    def name(self) -> str:
        return "head" if self.block is None else f"blocks.{self.block}"


def channel_groups(arch: Arch) -> list[ChannelGroup]:
    """Prunable groups of an arch, blocks in order, then the head."""
    groups, channels = [], arch.stem
    for index, block in enumerate(arch.blocks):
        if block.kind == "ir" and mid_channels(block, channels) != channels:
            residual = block.stride == 1 and block.out == channels
            groups.append(ChannelGroup(index, mid_channels(block, channels), channels, residual))
        channels = block.out
    groups.append(ChannelGroup(None, arch.head, channels, False))
    return groups


def _with_width(arch: Arch, group: ChannelGroup, width: int) -> Arch:
    if group.block is None:
        return dataclasses.replace(arch, head=width)
    blocks = list(arch.blocks)
    blocks[group.block] = dataclasses.replace(blocks[group.block], mid=width)
    return dataclasses.replace(arch, blocks=tuple(blocks))


def _gate(model: ArchNet, group: ChannelGroup) -> nn.BatchNorm2d:
    # The depthwise BN gates a mid channel exactly: with gamma = beta = 0 the channel emits act(0) = 0.
    return model.head_bn if group.block is None else model.blocks[group.block].dw_bn


def channel_costs(
    arch: Arch, in_channels: int, num_classes: int, image_size: int | tuple[int, int], target: str
) -> dict[str, float]:
    """Resource of one channel of each group: the exact slope of the arch's MACs or params in its width."""

    def measure(candidate: Arch) -> int:
        if target == "flops":
            return count_macs(candidate, in_channels, num_classes, image_size)
        return count_arch_params(candidate, in_channels, num_classes)

    costs = {}
    for group in channel_groups(arch):
        # Costs are linear in the width, so any second width works; it must keep the expand conv.
        other = group.width + 1
        if group.block is not None and other == group.in_channels:
            other += 1
        delta = measure(_with_width(arch, group, other)) - measure(_with_width(arch, group, group.width))
        costs[group.name] = delta / (other - group.width)
    return costs


def make_regulariser(
    arch: Arch, costs: dict[str, float], strength: float
) -> Callable[[nn.Module], torch.Tensor]:
    """strength * sum over groups of cost-weighted |gamma|; the costliest channel weighs 1."""
    groups = channel_groups(arch)
    # Scaling by the largest per-channel cost makes `strength` the L1 pressure on the most expensive
    # channels whatever the image size, model scale or target, so one default suits them all.
    top_cost = max(costs[g.name] for g in groups)
    weights = [(g, costs[g.name] / top_cost) for g in groups]

    def regulariser(model: nn.Module) -> torch.Tensor:
        terms = [weight * _gate(model, g).weight.abs().sum() for g, weight in weights]
        return strength * torch.stack(terms).sum()

    return regulariser


# ---------------------------------------------------------------- shrink / expand


@dataclass(frozen=True)
class GroupPlan:
    """Which parent channels of a group survive (in order) and the child width (>= survivors)."""

    group: ChannelGroup
    keep: torch.Tensor | None  # None: the whole block vanishes
    width: int
    alive: int  # channels at or above the threshold


@dataclass
class ShrinkResult:
    model: ArchNet
    arch: Arch
    plans: list[GroupPlan]
    blocks_removed: int


def _alive_channels(gamma: torch.Tensor, group: ChannelGroup, threshold: float, min_channels: int) -> torch.Tensor | None:
    alive = torch.nonzero(gamma >= threshold).flatten()
    if len(alive) == 0 and group.can_vanish:
        return None
    floor = min(min_channels, group.width)
    if len(alive) < floor:
        alive = torch.topk(gamma, floor).indices
    if group.block is not None and len(alive) == group.in_channels:
        alive = torch.topk(gamma, len(alive) + 1).indices  # mid == in would silently drop the expand conv
    return alive.sort().values


def _target_width(group: ChannelGroup, survivors: int, multiplier: float, min_channels: int) -> int:
    if multiplier == 1.0:
        return survivors
    width = max(1, min(min_channels, group.width), round(survivors * multiplier))
    if group.block is not None and width == group.in_channels:
        width += 1
    return width


def plan_group(
    gamma: torch.Tensor, group: ChannelGroup, threshold: float, min_channels: int, multiplier: float
) -> GroupPlan:
    """Decide survivors and child width of one group from its gate |gamma|."""
    gamma = gamma.detach().abs().float().cpu()
    alive = int((gamma >= threshold).sum())
    keep = _alive_channels(gamma, group, threshold, min_channels)
    if keep is None:
        return GroupPlan(group, None, 0, alive)
    width = _target_width(group, len(keep), multiplier, min_channels)
    if width < len(keep):  # a multiplier below 1 keeps the strongest survivors
        keep = keep[torch.topk(gamma[keep], width).indices].sort().values
    return GroupPlan(group, keep, width, alive)


def _child_arch(arch: Arch, plans: list[GroupPlan]) -> Arch:
    for plan in plans:
        if plan.keep is None:
            blocks = list(arch.blocks)
            blocks[plan.group.block] = Block("skip", out=blocks[plan.group.block].out)
            arch = dataclasses.replace(arch, blocks=tuple(blocks))
        else:
            arch = _with_width(arch, plan.group, plan.width)
    return arch


def _put(dst: torch.Tensor, src: torch.Tensor, dim: int, idx: torch.Tensor) -> None:
    """Copy the selected slices of src into the leading slices of dst (the rest stays fresh)."""
    dst.narrow(dim, 0, len(idx)).copy_(src.index_select(dim, idx))


def _copy_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _put(getattr(dst, name), getattr(src, name), 0, idx)
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _dropped(width: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[keep] = False
    return torch.nonzero(mask).flatten()


def _copy_ir(dst: InvertedResidual, src: InvertedResidual, keep: torch.Tensor) -> None:
    if src.expand is not None:
        _put(dst.expand.weight, src.expand.weight, 0, keep)
        _copy_bn(dst.expand_bn, src.expand_bn, keep)
    _put(dst.dw.weight, src.dw.weight, 0, keep)
    _copy_bn(dst.dw_bn, src.dw_bn, keep)
    if src.se is not None:
        _put(dst.se.reduce.weight, src.se.reduce.weight, 1, keep)
        dst.se.reduce.bias.copy_(src.se.reduce.bias)
        _put(dst.se.expand.weight, src.se.expand.weight, 0, keep)
        _put(dst.se.expand.bias, src.se.expand.bias, 0, keep)
        dst.se.reduce.weight[:, len(keep) :].zero_()
    _put(dst.project.weight, src.project.weight, 1, keep)
    # New (expanded) channels start silent so the child computes what the shrunk model did; they
    # still receive gradients through their non-zero activations and grow during fine-tuning.
    dst.project.weight[:, len(keep) :].zero_()
    dst.project_bn.load_state_dict(src.project_bn.state_dict())
    _fold_ir_constants(dst, src, _dropped(src.mid, keep))


def _fold_ir_constants(dst: InvertedResidual, src: InvertedResidual, dropped: torch.Tensor) -> None:
    """A dropped channel with gamma ~ 0 emits act(beta); fold that constant into what consumed it."""
    if len(dropped) == 0:
        return
    const = src.act(src.dw_bn.bias[dropped])
    if src.se is not None:
        # Exact for the SE input; the gated copy reaching `project` varies per image and is dropped.
        dst.se.reduce.bias += src.se.reduce.weight[:, dropped, 0, 0] @ const
        return
    dst.project_bn.running_mean -= src.project.weight[:, dropped, 0, 0] @ const


def _copy_head(dst: ArchNet, src: ArchNet, keep: torch.Tensor) -> None:
    _put(dst.head_conv.weight, src.head_conv.weight, 0, keep)
    _copy_bn(dst.head_bn, src.head_bn, keep)
    _put(dst.classifier.weight, src.classifier.weight, 1, keep)
    dst.classifier.weight[:, len(keep) :].zero_()
    dst.classifier.bias.copy_(src.classifier.bias)
    dropped = _dropped(src.arch.head, keep)
    if len(dropped):
        dst.classifier.bias += src.classifier.weight[:, dropped] @ F.relu(src.head_bn.bias[dropped])


def _transplant(dst: ArchNet, src: ArchNet, plans: list[GroupPlan]) -> None:
    by_block = {plan.group.block: plan for plan in plans}
    dst.stem_conv.load_state_dict(src.stem_conv.state_dict())
    dst.stem_bn.load_state_dict(src.stem_bn.state_dict())
    for index, (d, s) in enumerate(zip(dst.blocks, src.blocks)):
        if isinstance(d, InvertedResidual):
            plan = by_block.get(index)
            _copy_ir(d, s, plan.keep if plan is not None else torch.arange(s.mid))
    _copy_head(dst, src, by_block[None].keep)


def shrink(
    model: ArchNet,
    threshold: float,
    min_channels: int = 1,
    width_multiplier: float = 1.0,
    seed: int = 0,
) -> ShrinkResult:
    """Child of `model` without channels whose gate |gamma| < threshold, widths then scaled by the multiplier.

    Kept weights are copied; a residual block whose mid channels all fall below the threshold
    becomes a skip layer (its branch, including the project BN's constant output, is dropped).
    New channels of the expand step are initialised from `seed` with silent outgoing weights.
    """
    arch = model.arch
    plans = [
        plan_group(_gate(model, g).weight, g, threshold, min_channels, width_multiplier)
        for g in channel_groups(arch)
    ]
    child_arch = _child_arch(arch, plans)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        child = build_model(child_arch, model.in_channels, model.num_classes)
    source = copy.deepcopy(model).cpu().float()
    with torch.no_grad():
        _transplant(child, source, plans)
    child.train(model.training)
    removed = sum(plan.keep is None for plan in plans)
    return ShrinkResult(child, child_arch, plans, removed)


# ---------------------------------------------------------------- the compressor's steps


def compress(opts: MorphNetOptions, ctx: CompressContext) -> CompressResult:
    """Regularise a copy of the parent, shrink it, fine-tune the child (MorphNetCompressor.compress)."""
    parent = _checked_parent(ctx)
    image_size = (int(ctx.input_shape[-2]), int(ctx.input_shape[-1]))
    size = _resources(parent.arch, parent, image_size)
    reg_accuracy = _regularise(opts, parent, image_size, ctx)
    _report(ctx, "shrink", 0, 1)
    shrunk = shrink(parent, opts.threshold, opts.min_channels, opts.width_multiplier, ctx.train_config.seed)
    shrunk_accuracy, _ = _evaluate(shrunk.model, ctx)
    _report(ctx, "shrink", 1, 1)
    accuracy, loss = _finetune(opts, shrunk.model, ctx)
    stats = _stats(opts, shrunk, size, _resources(shrunk.arch, shrunk.model, image_size))
    stats.update(reg_val_accuracy=reg_accuracy, shrunk_val_accuracy=shrunk_accuracy)
    return CompressResult(shrunk.model, shrunk.arch, accuracy, loss, stats)


def _checked_parent(ctx: CompressContext) -> ArchNet:
    if not isinstance(ctx.model, ArchNet):
        raise PluginError(f"morphnet needs a model from nasflow.space.build_model, got {type(ctx.model).__name__}")
    if format_arch(ctx.model.arch) != format_arch(ctx.arch):
        raise PluginError(
            f"morphnet: the model is {format_arch(ctx.model.arch)!r} but the context says {format_arch(ctx.arch)!r}"
        )
    return copy.deepcopy(ctx.model)  # the parent stays as trained; its copy is regularised


def _regularise(opts: MorphNetOptions, model: ArchNet, image_size: tuple[int, int], ctx: CompressContext) -> float | None:
    if opts.reg_epochs == 0:
        return None
    costs = channel_costs(model.arch, model.in_channels, model.num_classes, image_size, opts.target)
    regulariser = make_regulariser(model.arch, costs, opts.strength)
    result = _train(model, ctx, opts.reg_epochs, "regularise", regulariser)
    return result.val_accuracy


def _finetune(opts: MorphNetOptions, model: ArchNet, ctx: CompressContext) -> tuple[float, float]:
    if opts.finetune_epochs == 0:
        return _evaluate(model, ctx)
    result = _train(model, ctx, opts.finetune_epochs, "finetune", None)
    return result.val_accuracy, result.val_loss


def _stats(opts: MorphNetOptions, shrunk: ShrinkResult, before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    groups = [
        {"group": p.group.name, "before": p.group.width, "alive": p.alive, "after": p.width} for p in shrunk.plans
    ]
    return {
        "target": opts.target,
        "strength": opts.strength,
        "threshold": opts.threshold,
        "width_multiplier": opts.width_multiplier,
        "groups": groups,
        "channels_before": {g["group"]: g["before"] for g in groups},
        "channels_after": {g["group"]: g["after"] for g in groups},
        "blocks_removed": shrunk.blocks_removed,
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "params_before": before["params"],
        "params_after": after["params"],
        "child_arch": format_arch(shrunk.arch),
    }


def _resources(arch: Arch, model: ArchNet, image_size: tuple[int, int]) -> dict[str, int]:
    return {"macs": count_macs(arch, model.in_channels, model.num_classes, image_size), "params": count_params(model)}


def _report(ctx: CompressContext, step: str, done: int, total: int) -> None:
    if ctx.progress is not None:
        ctx.progress(step, done, total)


def _train(model: nn.Module, ctx: CompressContext, epochs: int, step: str, extra_loss) -> TrainResult:
    _report(ctx, step, 0, epochs)
    result = train_model(
        model,
        ctx.dataset,
        ctx.train_config,
        epochs=epochs,
        extra_loss=extra_loss,
        progress=lambda done, total, _loss: _report(ctx, step, done, total),
    )
    if not math.isfinite(result.train_loss):
        raise PluginError(f"morphnet: training diverged during {step} (loss {result.train_loss}); lower lr or strength")
    return result


def _evaluate(model: nn.Module, ctx: CompressContext) -> tuple[float, float]:
    return evaluate(model, ctx.dataset)
