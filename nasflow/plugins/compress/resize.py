"""Weight surgery MorphNet's shrink and expand steps need beyond one block: cutting shared widths, widening.

`cut_shared` removes channels of shared widths (a feature map tied by residual adds) with
torch-pruning's dependency graph, which finds every layer a channel touches: the convolutions and
BatchNorms writing it, the blocks adding to it, the depthwise and squeeze-excite layers on it, and
whatever reads it next. The result is rebuilt from its architecture string with a strict load.

`widen` grows a network into a wider architecture of the same structure: each tensor keeps its
values in its leading slices, and every weight reading a new input channel starts at zero, so the
wider network computes exactly what the narrower one did while its new channels still receive
gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ...arch import Arch, format_arch
from ...arch.builder import ArchNet, build_model
from ...errors import PluginError

if TYPE_CHECKING:
    from .channel_groups import ChannelGroup

TRACE_SIZE = 32
"""Image side of the example input torch-pruning traces the network with (any size the strides allow)."""


def cut_shared(model: ArchNet, cuts: list[tuple["ChannelGroup", torch.Tensor]], arch: Arch) -> ArchNet:
    """`build_model(arch)` holding `model`'s weights without the dropped channels of each shared group.

    `cuts` pairs each shared group (of `model.arch`) with the indices of the channels to drop;
    `arch` is `model.arch` with those groups at their new widths (`channel_groups.with_width`).
    """
    import torch_pruning as tp

    work = _float_copy(model)
    example = torch.zeros(1, model.in_channels, TRACE_SIZE, TRACE_SIZE)
    graph = tp.DependencyGraph().build_dependency(work, example_inputs=example)
    for group, dropped in cuts:
        if len(dropped) == 0:
            continue
        bn = work.get_submodule(group.gates[0])
        graph.get_pruning_group(bn, tp.prune_batchnorm_out_channels, sorted(dropped.tolist())).prune()
    return _rebuilt(work, arch, "cutting shared widths")


def widen(model: ArchNet, arch: Arch, seed: int) -> ArchNet:
    """`build_model(arch)` (drawn from `seed`) computing what `model` does: `arch` has `model.arch`'s
    structure with some widths larger."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wide = build_model(arch, model.in_channels, model.num_classes)
    narrow = _float_copy(model)
    grown = {name: module for name, module in wide.named_modules()}
    with torch.no_grad():
        state = wide.state_dict()
        for name, source in narrow.state_dict().items():
            target = state[name]
            if target.dim() != source.dim() or any(t < s for t, s in zip(target.shape, source.shape)):
                raise PluginError(f"morphnet: cannot widen {name} from {tuple(source.shape)} to {tuple(target.shape)}")
            target[tuple(slice(0, n) for n in source.shape)] = source
            module = grown.get(name.rsplit(".", 1)[0])
            if name.endswith(".weight") and _reads_channels(module) and target.shape[1] > source.shape[1]:
                target[:, source.shape[1]:] = 0  # new input channels are silent at first
    wide.train(model.training)
    return wide


def _reads_channels(module: nn.Module | None) -> bool:
    """Whether dim 1 of the module's weight is its input channels (dense convs, linear layers)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def _float_copy(model: ArchNet) -> ArchNet:
    import copy

    return copy.deepcopy(model).cpu().float()


def _rebuilt(work: ArchNet, arch: Arch, step: str) -> ArchNet:
    with torch.random.fork_rng(devices=[]):  # every weight is replaced; leave the global RNG as it was
        model = build_model(arch, work.in_channels, work.num_classes)
    try:
        model.load_state_dict(work.state_dict(), strict=True)
    except RuntimeError as exc:
        raise PluginError(f"morphnet: {step} left weights that do not fit {format_arch(arch)!r}: {exc}") from None
    model.train(work.training)
    return model
