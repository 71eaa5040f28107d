"""The torch model of an architecture: `build_model` and the `ArchNet` it returns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .counting import count_params
from .fields import positive_int
from .grammar import STEM_KERNEL, Arch, validate_arch
from .layers import activation

__all__ = ["ArchNet", "build_model", "count_params", "head_module", "stem_module"]


class ArchNet(nn.Module):
    """The network an Arch describes; `blocks[i]` is the module of `arch.blocks[i]`.

    ``head_conv``/``head_bn`` are None for a head without a 1x1 conv, ``head_fc`` None without
    the fully connected layer. Activations are modules without parameters, so adding them left
    the state-dict keys (and seeded initialisation) of earlier models unchanged.
    """

    def __init__(self, arch: Arch, in_channels: int, num_classes: int):
        super().__init__()
        validate_arch(arch, in_channels)
        self.arch, self.in_channels, self.num_classes = arch, in_channels, num_classes
        self.stem_conv = nn.Conv2d(in_channels, arch.stem, STEM_KERNEL, arch.stem_stride, STEM_KERNEL // 2, bias=False)
        self.stem_bn = nn.BatchNorm2d(arch.stem)
        self.stem_act = activation(arch.stem_act)
        modules, channels = [], arch.stem
        for block in arch.blocks:
            modules.append(block.module(channels))
            channels = block.out
        self.blocks = nn.ModuleList(modules)
        self.head_conv = nn.Conv2d(channels, arch.head, 1, bias=False) if arch.head else None
        self.head_bn = nn.BatchNorm2d(arch.head) if arch.head else None
        self.head_act = activation(arch.head_act)
        pooled = arch.head or channels
        self.head_fc = nn.Linear(pooled, arch.head_fc) if arch.head_fc else None
        self.classifier = nn.Linear(arch.head_fc or pooled, num_classes)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_act(self.stem_bn(self.stem_conv(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        if self.head_conv is not None:
            x = self.head_act(self.head_bn(self.head_conv(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if self.head_fc is not None:
            x = self.head_act(self.head_fc(x))
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for block in self.blocks:
            x = block(x)
        return self.forward_head(x)


def build_model(arch: Arch, in_channels: int, num_classes: int) -> ArchNet:
    """Freshly initialised model for `arch` (raises ArchError if the arch does not fit the input)."""
    positive_int("num_classes", num_classes)
    return ArchNet(arch, in_channels, num_classes)


class StemOp(nn.Module):
    """The stem of an ArchNet on its own: conv + BN + act."""

    def __init__(self, net: ArchNet):
        super().__init__()
        self.stem_conv, self.stem_bn, self.stem_act = net.stem_conv, net.stem_bn, net.stem_act

    forward = ArchNet.forward_stem


class HeadOp(nn.Module):
    """The head of an ArchNet on its own: optional 1x1 conv + BN + act, pool, optional fc + act, classifier."""

    def __init__(self, net: ArchNet):
        super().__init__()
        self.head_conv, self.head_bn, self.head_act = net.head_conv, net.head_bn, net.head_act
        self.head_fc, self.classifier = net.head_fc, net.classifier

    forward = ArchNet.forward_head


def stem_module(arch: Arch, in_channels: int) -> nn.Module:
    """A module computing just the stem of `arch` fed `in_channels` channels."""
    return StemOp(ArchNet(Arch(stem=arch.stem, stem_stride=arch.stem_stride, stem_act=arch.stem_act), in_channels, 1))


def head_module(arch: Arch, channels: int, num_classes: int) -> nn.Module:
    """A module computing just the head of `arch` fed `channels` channels."""
    # An ArchNet with no blocks whose stem has `channels` outputs gives a head fed `channels`.
    shell = Arch(stem=channels, stem_stride=1, head=arch.head, head_act=arch.head_act, head_fc=arch.head_fc)
    return HeadOp(ArchNet(shell, channels, num_classes))
