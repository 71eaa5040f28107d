"""MorphNet's steps behind the `morphnet` compressor: resource-weighted L1 on BN gates, shrink, expand, fine-tune.

After MorphNet (Gordon et al., CVPR 2018). The channel groups (`channel_groups`) are the inner
widths the block kinds name (expanded channels, the head conv) and the shared widths: the stem's
and every block's output channels, tied by residual adds. The cost of one channel of a group is
the slope of the network's MACs, parameters or latency estimate in the group's width.

Shrink cuts the shared widths first (torch-pruning's dependency graph removes a channel from
every layer it touches), then the inner groups (hand-written, so a dropped channel's constant
output act(beta) is folded into what reads it); a residual block whose inner channels all die
becomes a skip layer. Expand widens the result (`resize.widen`): new channels start silent.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...arch import Arch, Block, count_arch_params, count_macs, count_params, format_arch
from ...arch.builder import ArchNet, build_model
from ...arch.layers import FusedInvertedResidual, InvertedResidual
from ...errors import PluginError
from ...plugin_api import CompressContext, CompressResult
from ...train import TrainResult, evaluate
from .channel_groups import ChannelGroup, channel_groups, gate_scales, shared_group, with_width
from .morphnet_plugin import MorphNetCompressor, MorphNetOptions  # noqa: F401  (the plugin, re-exported)
from .resize import cut_shared, widen
from .training import report as _report, train_step

__all__ = ["ChannelGroup", "channel_groups", "channel_costs", "make_regulariser", "shrink", "multiplier_for_budget"]

# The groups themselves (inner widths and shared widths) live in channel_groups.


def channel_costs(
    arch: Arch, in_channels: int, num_classes: int, image_size: int | tuple[int, int], target: str, latency=None
) -> dict[str, float]:
    """Resource of one channel of each group: the exact slope of the arch's MACs or params in its
    width, or of its latency under `latency` (a `WidthLatencyModel`, linear in the width too)."""

    def measure(candidate: Arch) -> float:
        return _count(candidate, in_channels, num_classes, image_size, target, latency)

    costs = {}
    for group in channel_groups(arch):
        # Costs are linear in the width, so any second width works; it must keep the expand conv.
        other = group.width + 1
        while other in group.avoid:
            other += 1
        delta = measure(with_width(arch, group, other)) - measure(with_width(arch, group, group.width))
        costs[group.name] = delta / (other - group.width)
    return costs


def make_regulariser(
    arch: Arch, costs: dict[str, float], strength: float
) -> Callable[[nn.Module], torch.Tensor]:
    """strength * sum over groups of cost-weighted |gamma|; the average channel weighs 1."""
    groups = channel_groups(arch)
    if not groups:
        raise PluginError(f"morphnet: {format_arch(arch)!r} has no prunable channel group (no expand conv, no head conv)")
    # Scaling by the average per-channel cost (over every prunable channel) makes `strength` the
    # L1 pressure on a typical channel whatever the image size, model scale or target, so one
    # default suits them all; a channel feeding several layers (a shared width) weighs more.
    mean_cost = sum(costs[g.name] * g.width for g in groups) / sum(g.width for g in groups)
    if mean_cost <= 0:
        raise PluginError(f"morphnet: no channel of {format_arch(arch)!r} costs anything: nothing to weigh channels by")
    weights = [(g, costs[g.name] / mean_cost) for g in groups]

    def regulariser(model: nn.Module) -> torch.Tensor:
        terms = [weight * gate_scales(model, g).sum() for g, weight in weights]
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


def _alive_channels(gamma: torch.Tensor, group: ChannelGroup, threshold: float, min_channels: int | None) -> torch.Tensor | None:
    alive = torch.nonzero(gamma >= threshold).flatten()
    if len(alive) == 0 and group.can_vanish:
        return None
    if len(alive) == 0 and min_channels is None:
        raise PluginError(
            f"morphnet: threshold {threshold:g} removes every channel of {group.name}, which has no residual path to "
            "stand in for it; lower morph.options.threshold or strength, or set min_channels to keep its strongest channels"
        )
    floor = min(min_channels or 1, group.width)
    if len(alive) < floor:
        alive = torch.topk(gamma, floor).indices
    while len(alive) in group.avoid and len(alive) < group.width:
        alive = torch.topk(gamma, len(alive) + 1).indices  # e.g. mid == in would silently drop the expand conv
    return alive.sort().values


def _target_width(group: ChannelGroup, survivors: int, multiplier: float, min_channels: int | None) -> int:
    if multiplier == 1.0:
        return survivors
    width = max(1, min(min_channels or 1, group.width), round(survivors * multiplier))
    while width in group.avoid:
        width += 1
    return width


def plan_group(
    gamma: torch.Tensor, group: ChannelGroup, threshold: float, min_channels: int | None, multiplier: float
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
            arch = with_width(arch, plan.group, plan.width)
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


def _copy_mid(dst: nn.Module, src: nn.Module, keep: torch.Tensor, producers: tuple[tuple[str, str], ...], gate: str) -> None:
    """Copy the kept mid channels of an (fused) inverted residual: `producers` are its (conv, BN) pairs
    that output mid channels, in order; SE and the projection read them."""
    for conv, bn in producers:
        _put(getattr(dst, conv).weight, getattr(src, conv).weight, 0, keep)
        _copy_bn(getattr(dst, bn), getattr(src, bn), keep)
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
    _fold_mid_constants(dst, src, _dropped(src.mid, keep), getattr(src, gate))


def _copy_ir(dst: InvertedResidual, src: InvertedResidual, keep: torch.Tensor) -> None:
    producers = ((("expand", "expand_bn"),) if src.expand is not None else ()) + (("dw", "dw_bn"),)
    _copy_mid(dst, src, keep, producers, "dw_bn")


def _copy_fir(dst: FusedInvertedResidual, src: FusedInvertedResidual, keep: torch.Tensor) -> None:
    _copy_mid(dst, src, keep, (("expand", "expand_bn"),), "expand_bn")


_COPY_MID = {InvertedResidual: _copy_ir, FusedInvertedResidual: _copy_fir}
"""How the weights of each module with prunable mid channels are carried into a narrower child."""


def _fold_mid_constants(dst: nn.Module, src: nn.Module, dropped: torch.Tensor, gate: nn.BatchNorm2d) -> None:
    """A dropped channel with gamma ~ 0 emits act(beta); fold that constant into what consumed it."""
    if len(dropped) == 0:
        return
    const = src.act(gate.bias[dropped])
    if src.se is not None:
        # Exact for the SE input; the gated copy reaching `project` varies per image and is dropped.
        dst.se.reduce.bias += src.se.reduce.weight[:, dropped, 0, 0] @ const
        return
    dst.project_bn.running_mean -= src.project.weight[:, dropped, 0, 0] @ const


def _copy_head(dst: ArchNet, src: ArchNet, keep: torch.Tensor | None) -> None:
    consumer = "head_fc" if src.head_fc is not None else "classifier"
    if keep is None:  # no head conv, or one that is not pruned
        for name in ("head_conv", "head_bn", "head_fc", "classifier"):
            if getattr(src, name) is not None:
                getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
        return
    _put(dst.head_conv.weight, src.head_conv.weight, 0, keep)
    _copy_bn(dst.head_bn, src.head_bn, keep)
    d, s = getattr(dst, consumer), getattr(src, consumer)
    _put(d.weight, s.weight, 1, keep)
    d.weight[:, len(keep) :].zero_()
    d.bias.copy_(s.bias)
    if consumer == "head_fc":
        dst.classifier.load_state_dict(src.classifier.state_dict())
    dropped = _dropped(src.arch.head, keep)
    if len(dropped):
        d.bias += s.weight[:, dropped] @ src.head_act(src.head_bn.bias[dropped])


def _transplant(dst: ArchNet, src: ArchNet, plans: list[GroupPlan]) -> None:
    by_block = {plan.group.block: plan for plan in plans}
    dst.stem_conv.load_state_dict(src.stem_conv.state_dict())
    dst.stem_bn.load_state_dict(src.stem_bn.state_dict())
    for index, (d, s) in enumerate(zip(dst.blocks, src.blocks)):
        plan = by_block.get(index)
        if isinstance(d, nn.Identity):
            continue
        if plan is None:  # nothing of it is pruned: same shapes, same weights
            d.load_state_dict(s.state_dict())
        else:
            _COPY_MID[type(s)](d, s, plan.keep)
    head = by_block.get(None)
    _copy_head(dst, src, head.keep if head is not None else None)


@dataclass(frozen=True)
class ChildPlan:
    """How shrink and expand turn a network into its child: shared widths first, then the inner groups."""

    shared: list[GroupPlan]  # groups of the parent's arch: survivors (`keep`) and width after expanding
    cut_arch: Arch  # the parent with every shared width at its survivors
    inner: list[GroupPlan]  # inner groups of cut_arch
    inner_arch: Arch  # cut_arch with the inner groups planned (blocks may have become skip layers)
    arch: Arch  # the child: inner_arch with the shared widths expanded

    @property
    def plans(self) -> list[GroupPlan]:
        return self.inner + self.shared


def plan_child(model: ArchNet, threshold: float, min_channels: int | None = None, multiplier: float = 1.0) -> ChildPlan:
    """The child `shrink` gives (architectures and survivors only; no weights are built)."""
    arch = model.arch
    groups = channel_groups(arch)
    scales = {g.name: gate_scales(model, g).detach().float().cpu() for g in groups}
    shared, cut_arch = [], arch
    for group in (g for g in groups if g.shared):
        plan = plan_group(scales[group.name], group, threshold, min_channels, multiplier)
        if len(plan.keep) != group.width:
            # The survivors may meet a width another group's change made structural: keep one more.
            current, width = _fit_width(cut_arch, group, len(plan.keep))
            keep = torch.topk(scales[group.name], width).indices.sort().values if width != len(plan.keep) else plan.keep
            plan = dataclasses.replace(plan, keep=keep, width=max(plan.width, width))
            cut_arch = with_width(cut_arch, current, width)
        shared.append(plan)
    inner = [
        plan_group(scales[g.name], g, threshold, min_channels, multiplier)
        for g in channel_groups(cut_arch, residual_widths=False)
    ]
    inner_arch = child = _child_arch(cut_arch, inner)
    for plan in shared:
        if plan.width != len(plan.keep):
            current, width = _fit_width(child, plan.group, plan.width)
            child = with_width(child, current, width)
    return ChildPlan(shared, cut_arch, inner, inner_arch, child)


def _fit_width(arch: Arch, group: ChannelGroup, width: int) -> tuple[ChannelGroup, int]:
    """The shared group as it stands in `arch` and the first width from `width` up that keeps the structure."""
    group = shared_group(arch, group)
    while width in group.avoid:
        width += 1
    return group, width


def shrink(
    model: ArchNet,
    threshold: float,
    min_channels: int | None = None,
    width_multiplier: float = 1.0,
    seed: int = 0,
) -> ShrinkResult:
    """Child of `model` without channels whose gate |gamma| < threshold, widths then scaled by the multiplier.

    Kept weights are copied; a residual block whose mid channels all fall below the threshold
    becomes a skip layer (its branch, including the project BN's constant output, is dropped).
    New channels of the expand step are initialised from `seed` with silent outgoing weights.
    """
    plan = plan_child(model, threshold, min_channels, width_multiplier)
    cuts = [(p.group, _dropped(p.group.width, p.keep)) for p in plan.shared]
    source = cut_shared(model, cuts, plan.cut_arch) if plan.cut_arch != model.arch else copy.deepcopy(model).cpu().float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        child = build_model(plan.inner_arch, model.in_channels, model.num_classes)
    with torch.no_grad():
        _transplant(child, source, plan.inner)
    if plan.arch != plan.inner_arch:
        child = widen(child, plan.arch, seed + 1)
    child.train(model.training)
    removed = sum(p.keep is None for p in plan.inner)
    return ShrinkResult(child, plan.arch, plan.plans, removed)


# ---------------------------------------------------------------- expand to a budget

BISECTION_STEPS = 40  # the multiplier interval halves each step; the count is exact at every probe
BISECTION_TOLERANCE = 1e-6  # stop once the interval is this small relative to the multiplier


def _count(arch: Arch, in_channels: int, num_classes: int, image_size: tuple[int, int], target: str, latency=None) -> float:
    if target == "flops":
        return count_macs(arch, in_channels, num_classes, image_size)
    if target == "latency":
        if latency is None:
            raise PluginError("morphnet: target 'latency' needs the latency model of its device (the morph stage fits it to the device's LUT)")
        return latency.predict(arch)
    return count_arch_params(arch, in_channels, num_classes)


UNITS = {"flops": "MACs", "size": "parameters", "latency": "ms"}


def _expanded_arch(model: ArchNet, threshold: float, min_channels: int | None, multiplier: float) -> Arch:
    """The architecture `shrink` would give at `multiplier` (no weights are built)."""
    return plan_child(model, threshold, min_channels, multiplier).arch


def multiplier_for_budget(
    model: ArchNet, threshold: float, min_channels: int | None, budget: float, image_size: tuple[int, int], target: str,
    latency=None,
) -> tuple[float, float]:
    """(largest uniform multiplier of the shrunk network whose `target` count is within `budget`, that count).

    The count of each probe is exact (`count_macs` / `count_arch_params` of the architecture the
    multiplier gives); it grows with the multiplier in steps (widths are whole channels), so
    bisection finds the last step within the budget. A budget below the smallest network the
    shrink can give (every surviving group at `min_channels`) is refused, with that count.
    """
    def count(multiplier: float) -> float:
        arch = _expanded_arch(model, threshold, min_channels, multiplier)
        return _count(arch, model.in_channels, model.num_classes, image_size, target, latency)

    widest = max((g.width for g in channel_groups(model.arch)), default=1)
    low = 1.0 / (2 * widest)  # every group at its floor: the smallest network the shrink can give
    smallest = count(low)
    unit = UNITS[target]
    if smallest > budget:
        raise PluginError(
            f"morphnet: budget {_amount(budget, target)} {unit} is below the smallest network the shrink can give "
            f"({_amount(smallest, target)} {unit}: every prunable group at {min_channels or 1} channel(s)); raise morph.options.budget"
        )
    high = 2.0
    while count(high) <= budget:  # grow the bracket until it holds the budget
        low, high = high, high * 2
        if high > 1024:
            break
    for _ in range(BISECTION_STEPS):
        if high - low <= BISECTION_TOLERANCE * high:
            break  # finer than any width step a network of sane size has; each probe plans a whole child
        middle = (low + high) / 2
        if count(middle) <= budget:
            low = middle
        else:
            high = middle
    return low, count(low)


def _amount(value: float, target: str) -> str:
    return f"{value:.4g}" if target == "latency" else f"{value:,.0f}"


# ---------------------------------------------------------------- the compressor's steps


def compress(opts: MorphNetOptions, ctx: CompressContext) -> CompressResult:
    """MorphNet's loop (MorphNetCompressor.compress): `cycles` times, regularise a copy of the
    current network, shrink it, expand it (to the budget, relative to the seed network, or by the
    multiplier) and fine-tune it; the next cycle starts from that network. Returns the last cycle's
    network with the earlier ones as `intermediates`."""
    seed = _checked_parent(ctx)
    image_size = (int(ctx.input_shape[-2]), int(ctx.input_shape[-1]))
    latency = _latency_model(opts, ctx)
    seed_size = _resources(seed.arch, seed, image_size, latency)
    budget = None
    if opts.budget is not None:
        budget = opts.budget * seed_size[_resource_key(opts.target)] if opts.budget_kind == "relative" else opts.budget
    results: list[CompressResult] = []
    model = seed
    for cycle in range(1, opts.cycles + 1):
        result = _cycle(opts, model, ctx, image_size, budget, cycle, latency)
        result.stats.update(cycle=cycle, cycles=opts.cycles, seed_macs=seed_size["macs"], seed_params=seed_size["params"])
        results.append(result)
        model = copy.deepcopy(result.model)  # the recorded network stays as fine-tuned
    final = results[-1]
    final.intermediates = results[:-1]
    return final


def _cycle(opts: MorphNetOptions, model: ArchNet, ctx: CompressContext, image_size: tuple[int, int],
           budget: float | None, cycle: int, latency=None) -> CompressResult:
    """One regularise -> shrink -> expand -> fine-tune pass over `model` (trained in place)."""
    label = "" if opts.cycles == 1 else f"cycle {cycle}/{opts.cycles}: "
    size = _resources(model.arch, model, image_size, latency)
    reg_accuracy = _regularise(opts, model, image_size, ctx, label, latency)
    _report(ctx, f"{label}shrink", 0, 1)
    multiplier = opts.width_multiplier
    if budget is not None:
        multiplier, _ = multiplier_for_budget(model, opts.threshold, opts.min_channels, budget, image_size, opts.target, latency)
    shrunk = shrink(model, opts.threshold, opts.min_channels, multiplier, ctx.train_config.seed + cycle - 1)
    shrunk_accuracy, _ = _evaluate(shrunk.model, ctx)
    _report(ctx, f"{label}shrink", 1, 1)
    accuracy, loss = _finetune(opts, shrunk.model, ctx, label)
    stats = _stats(opts, shrunk, size, _resources(shrunk.arch, shrunk.model, image_size, latency))
    stats.update(reg_val_accuracy=reg_accuracy, shrunk_val_accuracy=shrunk_accuracy, width_multiplier=multiplier)
    if latency is not None:
        stats.update(latency_device=latency.device, latency_source="estimated", latency_model=latency.describe())
    if budget is not None:
        stats.update(budget=budget, budget_resource=_resource_key(opts.target))
    return CompressResult(shrunk.model, shrunk.arch, accuracy, loss, stats)


def _checked_parent(ctx: CompressContext) -> ArchNet:
    if not isinstance(ctx.model, ArchNet):
        raise PluginError(f"morphnet needs a model from nasflow.space.build_model, got {type(ctx.model).__name__}")
    if format_arch(ctx.model.arch) != format_arch(ctx.arch):
        raise PluginError(
            f"morphnet: the model is {format_arch(ctx.model.arch)!r} but the context says {format_arch(ctx.arch)!r}"
        )
    return copy.deepcopy(ctx.model)  # the parent stays as trained; its copy is regularised


def _latency_model(opts: MorphNetOptions, ctx: CompressContext):
    """The latency target's model of its device, or None for the other targets."""
    if opts.target != "latency":
        return None
    device = opts.latency_device or ctx.objective_device
    if device not in ctx.latency:
        have = ", ".join(sorted(ctx.latency)) or "none"
        raise PluginError(f"morphnet: target 'latency' on {device} needs that device's latency model (models: {have}); "
                          "set profile.enabled and profile.lut: true")
    return ctx.latency[device]


def _regularise(opts: MorphNetOptions, model: ArchNet, image_size: tuple[int, int], ctx: CompressContext,
                label: str = "", latency=None) -> float | None:
    if opts.reg_epochs == 0:
        return None
    costs = channel_costs(model.arch, model.in_channels, model.num_classes, image_size, opts.target, latency)
    if costs and max(costs.values()) <= 0:
        # Only the latency model can price every channel at nothing: its fit put all of the LUT's time in intercepts.
        model_text = f" ({latency.describe()})" if latency is not None else ""
        raise PluginError(
            f"morphnet: under target {opts.target!r} no channel of {format_arch(model.arch)!r} costs anything"
            f"{model_text}, so there is nothing to weigh channels by; re-profile the device on a quieter machine "
            "(profile.refresh) or use target flops"
        )
    regulariser = make_regulariser(model.arch, costs, per_step_strength(opts.strength, opts.reg_epochs, ctx))
    result = _train(model, ctx, opts.reg_epochs, f"{label}regularise", regulariser)
    return result.val_accuracy


def per_step_strength(strength: float, epochs: int, ctx: CompressContext) -> float:
    """The L1 coefficient per training step that moves an average channel's gate by `strength` in all
    (lr x steps x coefficient) over the regularisation phase, whatever its length or learning rate."""
    n = ctx.dataset.size("train")
    steps = epochs * max(1, n // max(1, min(ctx.train_config.batch_size, n)))  # train_model drops the ragged batch
    return strength / (ctx.train_config.lr * steps)


def _finetune(opts: MorphNetOptions, model: ArchNet, ctx: CompressContext, label: str = "") -> tuple[float, float]:
    if opts.finetune_epochs == 0:
        return _evaluate(model, ctx)
    result = _train(model, ctx, opts.finetune_epochs, f"{label}finetune", None)
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
        **({"latency_ms_before": before["latency_ms"], "latency_ms_after": after["latency_ms"]} if "latency_ms" in after else {}),
        "child_arch": format_arch(shrunk.arch),
    }


def _resource_key(target: str) -> str:
    """The `_resources` entry a target counts."""
    return {"flops": "macs", "size": "params", "latency": "latency_ms"}[target]


def _resources(arch: Arch, model: ArchNet, image_size: tuple[int, int], latency=None) -> dict[str, float]:
    counts: dict[str, float] = {"macs": count_macs(arch, model.in_channels, model.num_classes, image_size),
                                "params": count_params(model)}
    if latency is not None:
        counts["latency_ms"] = latency.predict(arch)
    return counts


def _train(model: nn.Module, ctx: CompressContext, epochs: int, step: str, extra_loss) -> TrainResult:
    return train_step(model, ctx, epochs, step, f"morphnet: training diverged during {step}; lower lr or strength",
                      extra_loss=extra_loss)


def _evaluate(model: nn.Module, ctx: CompressContext) -> tuple[float, float]:
    return evaluate(model, ctx.dataset)
