"""The `prune` compressor: structured channel pruning with torch-pruning, back to an architecture string.

torch-pruning's DependencyGraph finds every tensor a channel touches (the convs and BatchNorms
producing it, squeeze-excite, the projection or classifier reading it), so removing a channel
removes all of its slices at once. Only the channel groups nasflow's grammar can write are
pruned: `channel_groups(arch, residual_widths=False)`, i.e. the expanded (mid) channels of an ``ir`` block with
an expand conv and no channel groups, of a ``fir`` block, and the head's 1x1 conv. The stem,
block outputs (residual widths), ``ds``/``conv`` blocks, grouped ``ir`` blocks, squeeze-excite
widths, the head's fc layer and the classifier keep their widths.

Channels are ranked globally across groups by torch-pruning's group importance (`magnitude`: the
L1/L2 norm of every weight slice of the channel; `taylor`: |weight x gradient| summed over a few
training batches), each group's scores divided by their mean as torch-pruning does. Every pruning
iteration removes the lowest-ranked 1 % of the prunable channels (at least one), keeping every
group at one channel at least and an ``ir`` block's mid width off its input width (where the
grammar would drop the expand conv), until the exact count (`count_macs` or `count_arch_params`)
of the child architecture is at or below `ratio` x the parent's. With `steps` > 1 the target is
reached in rounds (ratio ** (i / steps) of the parent's count after round i), each followed by
`finetune_epochs` of fine-tuning.

The surviving widths are read from the pruned modules, written into the parent's architecture
(`channel_groups.with_width`), and the pruned weights are loaded into `build_model(child arch)` with
`strict=True`; the rebuilt model must compute what the pruned one does. Torch and torch-pruning
load only when a model is compressed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ...hookspecs import hookimpl
from ...plugin_api import Compressor, PluginOptions

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ...arch import Arch
    from ...plugin_api import CompressContext, CompressResult
    from .channel_groups import ChannelGroup

ITERATION_SHARE = 0.01
"""Share of the parent's prunable channels one pruning iteration removes (at least one channel)."""

CHECK_IMAGES = 64
"""Validation images the rebuilt child and the pruned network are compared on."""

CHECK_RTOL = 1e-5
"""Largest output difference allowed between them, relative to the largest output (at least 1)."""


class PruneOptions(PluginOptions):
    ratio: float = Field(0.5, gt=0, lt=1, description="share of the parent's resource (MACs or parameters) the child keeps at most")
    resource: Literal["macs", "params"] = Field("macs", description="what `ratio` counts: MACs or parameters of the architecture")
    importance: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="channel ranking: weight norm (`magnitude`) or first-order Taylor |w x grad| (`taylor`)"
    )
    p: Literal[1, 2] = Field(2, description="norm of the magnitude importance (1: L1, 2: L2)")
    taylor_batches: int = Field(4, ge=1, description="training batches (train.config.batch_size) whose gradients the Taylor importance sums")
    steps: int = Field(1, ge=1, description="pruning rounds: round i ends at ratio ** (i / steps) of the parent's count, then fine-tunes")
    finetune_epochs: int = Field(2, ge=0, description="training epochs after each round (0: the pruned weights as they are)")


@dataclass
class PruneOutcome:
    """What the pruning rounds produced, before the final fine-tuning."""

    child: "nn.Module"  # build_model(arch) holding the pruned weights (CPU, eval mode)
    pruned: "nn.Module"  # the parent copy torch-pruning cut (CPU, eval mode), which `child` was checked against
    arch: "Arch"
    iterations: int  # pruning iterations over all rounds
    max_abs_diff: float  # rebuilt child vs the pruned network on CHECK_IMAGES validation images
    groups: list[dict[str, Any]] = field(default_factory=list)  # per group: name, before, after
    skipped_groups: list[str] = field(default_factory=list)  # groups torch-pruning ties to fixed widths


class PruneCompressor(Compressor):
    """Structured pruning of the trained parent (torch-pruning), rebuilt from its architecture, fine-tuned."""

    name = "prune"
    description = "torch-pruning: globally ranked channels (magnitude/Taylor) of the arch's prunable groups cut to a MACs/params ratio, fine-tuned"
    Options = PruneOptions

    def compress(self, ctx: "CompressContext") -> "CompressResult":
        return compress(self.options, ctx)  # type: ignore[arg-type]


@hookimpl
def nasflow_compressors():
    return [PruneCompressor]


# ---------------------------------------------------------------- the steps (torch loads from here on)


def compress(opts: PruneOptions, ctx: "CompressContext") -> "CompressResult":
    """Prune a copy of the parent to the ratio, rebuild it from its architecture, fine-tune it."""
    from ...arch import count_params, format_arch
    from ...plugin_api import CompressResult
    from ...train import evaluate

    outcome = prune_network(opts, ctx)
    parent, child = ctx.model, outcome.child
    pruned_accuracy, pruned_loss = evaluate(child, ctx.dataset)
    accuracy, loss = pruned_accuracy, pruned_loss
    if opts.finetune_epochs:
        accuracy, loss = _finetune(child, ctx, opts.finetune_epochs, "finetune")
    before, after = _counts(ctx.arch, ctx), _counts(outcome.arch, ctx)
    stats = {
        "resource": opts.resource,
        "ratio": opts.ratio,
        "importance": opts.importance,
        **({"p": opts.p} if opts.importance == "magnitude" else {"taylor_batches": opts.taylor_batches}),
        "steps": opts.steps,
        "finetune_epochs": opts.finetune_epochs,
        "iterations": outcome.iterations,
        "target": opts.ratio * before[opts.resource],
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "params_before": count_params(parent),
        "params_after": count_params(child),
        "kept": after[opts.resource] / before[opts.resource],
        "channels_before": {g["group"]: g["before"] for g in outcome.groups},
        "channels_after": {g["group"]: g["after"] for g in outcome.groups},
        "skipped_groups": outcome.skipped_groups,
        "rebuild_max_abs_diff": outcome.max_abs_diff,
        "pruned_val_accuracy": pruned_accuracy,
        "child_arch": format_arch(outcome.arch),
    }
    return CompressResult(child.cpu().eval(), outcome.arch, accuracy, loss, stats)


def prune_network(opts: PruneOptions, ctx: "CompressContext") -> PruneOutcome:
    """The pruning rounds (with fine-tuning between them) and the rebuilt, checked child; no final fine-tuning."""
    import copy

    import torch
    import torch_pruning as tp

    from ...errors import PluginError
    from ...train_device import resolve_device
    from .channel_groups import channel_groups, gate as _gate

    parent = _checked_parent(ctx)
    device = resolve_device(ctx.device) if isinstance(ctx.device, str) else ctx.device
    work = copy.deepcopy(parent).float().to(device).eval()
    groups = channel_groups(parent.arch, residual_widths=False)  # block outputs keep their widths here
    if not groups:
        raise PluginError(
            f"prune: {_arch_text(parent.arch)!r} has no prunable channel group (an ir block with an expand conv, "
            "a fir block or a head conv)"
        )
    parent_count = _count(parent.arch, opts.resource, ctx)
    target = opts.ratio * parent_count
    example = torch.zeros(tuple(ctx.input_shape), device=device)
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    entries, skipped = [], []
    for group in groups:
        gate = _gate(work, group)
        if _stays_inside(graph, tp, gate, _owned_modules(work, group)):
            entries.append((group, gate))
        else:
            skipped.append(group.name)
    # Groups torch-pruning ties to a fixed width (none in the built-in kinds) keep their width.
    floors = {g.name: _floor(g) if g.name not in skipped else g.width for g in groups}
    _check_reachable(opts, ctx, parent.arch, groups, floors, parent_count, target, skipped)
    importance = (
        tp.importance.MagnitudeImportance(p=opts.p) if opts.importance == "magnitude" else tp.importance.TaylorImportance()
    )
    chunk = max(1, round(ITERATION_SHARE * sum(g.width for g, _ in entries)))

    iterations = 0
    for round_ in range(1, opts.steps + 1):
        round_target = parent_count * opts.ratio ** (round_ / opts.steps)
        _report(ctx, "prune", round_ - 1, opts.steps)
        while (count := _count(_current_arch(parent.arch, work, groups), opts.resource, ctx)) > round_target:
            if opts.importance == "taylor":
                _taylor_gradients(work, ctx, opts.taylor_batches, device)
            removed = _prune_iteration(graph, tp, importance, entries, floors, chunk)
            work.zero_grad(set_to_none=True)
            if removed == 0:
                raise PluginError(
                    f"prune: cannot reach ratio {opts.ratio} of the parent's {_unit(opts.resource)}: stopped at "
                    f"{count:,} of {parent_count:,} ({count / parent_count:.3f}) with every prunable group at its "
                    f"smallest width{_skipped_note(skipped)}; raise morph.options.ratio"
                )
            iterations += 1
        if round_ < opts.steps and opts.finetune_epochs:
            _finetune(work, ctx, opts.finetune_epochs, f"finetune {round_}/{opts.steps}")
            work.eval()
    _report(ctx, "prune", opts.steps, opts.steps)

    arch = _current_arch(parent.arch, work, groups)
    child, diff = _rebuild(work, arch, ctx)
    widths = [{"group": g.name, "before": g.width, "after": _gate(child, g).num_features} for g in groups]
    return PruneOutcome(child, work, arch, iterations, diff, widths, skipped)


def _checked_parent(ctx: "CompressContext"):
    from ...arch import format_arch
    from ...arch.builder import ArchNet
    from ...errors import PluginError

    if not isinstance(ctx.model, ArchNet):
        raise PluginError(f"prune needs a model from nasflow.arch.build_model, got {type(ctx.model).__name__}")
    if format_arch(ctx.model.arch) != format_arch(ctx.arch):
        raise PluginError(f"prune: the model is {format_arch(ctx.model.arch)!r} but the context says {format_arch(ctx.arch)!r}")
    return ctx.model


def _image_size(ctx: "CompressContext") -> tuple[int, int]:
    return int(ctx.input_shape[-2]), int(ctx.input_shape[-1])


def _count(arch: "Arch", resource: str, ctx: "CompressContext") -> int:
    """The exact MACs or parameters of `arch` on the context's data."""
    from ...arch import count_arch_params, count_macs

    data = ctx.dataset
    if resource == "macs":
        return count_macs(arch, data.in_channels, data.num_classes, _image_size(ctx))
    return count_arch_params(arch, data.in_channels, data.num_classes)


def _counts(arch: "Arch", ctx: "CompressContext") -> dict[str, int]:
    return {"macs": _count(arch, "macs", ctx), "params": _count(arch, "params", ctx)}


def _unit(resource: str) -> str:
    return "MACs" if resource == "macs" else "parameters"


def _arch_text(arch: "Arch") -> str:
    from ...arch import format_arch

    return format_arch(arch)


def _floor(group: "ChannelGroup") -> int:
    """The smallest width the group may take: one channel, or the next width the kind allows."""
    width = 1
    while width in group.avoid:
        width += 1
    return min(width, group.width)


def _with_widths(arch: "Arch", groups: list["ChannelGroup"], widths: dict[str, int]) -> "Arch":
    from .channel_groups import with_width as _with_width

    for group in groups:
        arch = _with_width(arch, group, widths[group.name])
    return arch


def _current_arch(parent_arch: "Arch", model: "nn.Module", groups: list["ChannelGroup"]) -> "Arch":
    """The parent's architecture with each group at the width of its gate BN in the (pruned) model."""
    from .channel_groups import gate as _gate

    return _with_widths(parent_arch, groups, {g.name: _gate(model, g).num_features for g in groups})


def _check_reachable(opts, ctx, arch, groups, floors, parent_count: int, target: float, skipped: list[str]) -> None:
    """PluginError before any pruning when even every group at its smallest width is above the target."""
    from ...errors import PluginError

    smallest = _count(_with_widths(arch, groups, floors), opts.resource, ctx)
    if smallest > target:
        unit = _unit(opts.resource)
        raise PluginError(
            f"prune: ratio {opts.ratio} of the parent's {unit} ({target:,.0f} of {parent_count:,}) cannot be reached: "
            f"with every prunable group at one channel the network still has {smallest:,} {unit} "
            f"({smallest / parent_count:.3f} of the parent's; the stem, block outputs, ds/conv blocks and the "
            f"classifier are not pruned){_skipped_note(skipped)}; raise morph.options.ratio to at least {math.ceil(smallest / parent_count * 1000) / 1000}"
        )


def _owned_modules(model: "nn.Module", group: "ChannelGroup") -> set:
    """The modules a group's channels may touch: its block's, or the head's layers."""
    if group.block is None:
        return {m for m in (model.head_conv, model.head_bn, model.head_fc, model.classifier) if m is not None}
    return set(model.blocks[group.block].modules())


def _stays_inside(graph, tp, gate: "nn.Module", owned: set) -> bool:
    """Whether pruning a channel of the group touches only layers inside it (nothing whose width is fixed)."""
    from torch import nn

    group = graph.get_pruning_group(gate, tp.prune_batchnorm_out_channels, [0])
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and module not in owned:
            return False
    return True


def _prune_iteration(graph, tp, importance, entries, floors: dict[str, int], chunk: int) -> int:
    """Remove the `chunk` globally least important channels (each group kept at its floor); channels removed."""
    import torch

    candidates: list[tuple[float, int, int]] = []  # (score, entry, channel), each group's spare channels only
    ranked: dict[int, list[int]] = {}  # entry -> its channels, least important first
    for k, (group, gate) in enumerate(entries):
        width = gate.num_features
        spare = width - floors[group.name]
        if spare <= 0:
            continue
        scores = importance(graph.get_pruning_group(gate, tp.prune_batchnorm_out_channels, list(range(width))))
        if scores is None:
            continue
        # A group whose scores are all zero has mean 0: torch-pruning's mean normaliser gives NaN.
        scores = torch.nan_to_num(scores.detach().float().cpu(), nan=0.0)
        order = torch.argsort(scores, stable=True).tolist()
        ranked[k] = order
        candidates += [(float(scores[c]), k, c) for c in order[:spare]]
    candidates.sort(key=lambda item: item[0])
    chosen: dict[int, int] = {}  # entry -> how many of its least important channels go
    for _, k, _ in candidates[:chunk]:
        chosen[k] = chosen.get(k, 0) + 1
    removed = 0
    for k, n in chosen.items():
        group, gate = entries[k]
        if gate.num_features - n in group.avoid:
            n += 1  # e.g. an ir mid width equal to its input would drop the expand conv; the floor is below it
        graph.get_pruning_group(gate, tp.prune_batchnorm_out_channels, sorted(ranked[k][:n])).prune()
        removed += n
    return removed


def _taylor_gradients(model: "nn.Module", ctx: "CompressContext", batches: int, device) -> None:
    """Sum the cross-entropy gradients of `batches` training batches into the weights (eval-mode BN)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    data = ctx.dataset
    size, batch = data.size("train"), ctx.train_config.batch_size
    order = np.random.default_rng(ctx.train_config.seed).permutation(size)
    labels = data.labels_of("train")
    model.eval()
    model.zero_grad(set_to_none=True)
    for b in range(batches):
        positions = np.take(order, np.arange(b * batch, (b + 1) * batch), mode="wrap")
        x = torch.from_numpy(data.batch("train", positions)).to(device)
        y = torch.from_numpy(labels[positions]).long().to(device)
        F.cross_entropy(model(x), y).backward()


def _rebuild(work: "nn.Module", arch: "Arch", ctx: "CompressContext") -> tuple["nn.Module", float]:
    """build_model(arch) with the pruned weights (strict), checked to compute what the pruned network does."""
    import torch

    from ...arch import build_model
    from ...errors import PluginError

    work = work.cpu().eval()
    with torch.random.fork_rng(devices=[]):  # the weights are replaced; leave the global RNG as it was
        child = build_model(arch, work.in_channels, work.num_classes)
    state = {name: tensor.detach().clone() for name, tensor in work.state_dict().items()}
    try:
        child.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PluginError(f"prune: the pruned weights do not fit {_arch_text(arch)!r}: {exc}") from None
    child.eval()
    x = torch.from_numpy(ctx.dataset.batch("val", slice(0, CHECK_IMAGES)))
    with torch.no_grad():
        expected, got = work(x), child(x)
    diff = float((expected - got).abs().max())
    tolerance = CHECK_RTOL * max(1.0, float(expected.abs().max()))
    if not diff <= tolerance:  # also catches NaN
        raise PluginError(
            f"prune: the model rebuilt from {_arch_text(arch)!r} differs from the pruned network by {diff:.3g} "
            f"(tolerance {tolerance:.3g}); torch-pruning changed something the architecture does not describe"
        )
    return child, diff


def _finetune(model: "nn.Module", ctx: "CompressContext", epochs: int, step: str) -> tuple[float, float]:
    from .training import train_step

    result = train_step(model, ctx, epochs, step, "prune: fine-tuning diverged; lower train.config.lr")
    return result.val_accuracy, result.val_loss


def _skipped_note(skipped: list[str]) -> str:
    return f" (not prunable here: {', '.join(skipped)})" if skipped else ""


def _report(ctx: "CompressContext", step: str, done: int, total: int) -> None:
    from .training import report

    report(ctx, step, done, total)
