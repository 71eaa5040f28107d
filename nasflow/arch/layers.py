"""Torch modules of the block kinds and their shared parts (imported only when a model is built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .kinds import DSBlock, FusedIRBlock, IRBlock


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """relu6(x + 3) / 6, written with plain ops so it exports to any ONNX opset as Clip."""
    return F.relu6(x + 3.0) / 6.0


class HardSwish(nn.Module):
    """x * hard_sigmoid(x), kept out of nn.Hardswish so ONNX export needs no HardSwish op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * hard_sigmoid(x)


def activation(name: str) -> nn.Module:
    """A fresh module of a grammar activation (``relu``, ``relu6``, ``hswish``, ``swish``)."""
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": HardSwish, "swish": nn.SiLU}[name]()


class SqueezeExcite(nn.Module):
    """Channel gating: global pool, 1x1 reduce, ReLU, 1x1 expand, hard-sigmoid."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.expand(F.relu(self.reduce(scale)))
        return x * hard_sigmoid(scale)


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle: interleave the channels of `groups` groups, so grouped convs mix them."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class InvertedResidual(nn.Module):
    """MobileNetV2-style block: optional 1x1 expand, depthwise kxk, optional SE, 1x1 project."""

    def __init__(self, block: IRBlock, in_channels: int):
        super().__init__()
        mid, groups = block.mid_channels(in_channels), block.groups
        self.in_channels, self.mid, self.out = in_channels, mid, block.out
        self.use_residual = block.residual(in_channels)
        # Attribute names and creation order are what checkpoints and seeded initialisation rely on.
        self.expand = nn.Conv2d(in_channels, mid, 1, groups=groups, bias=False) if block.has_expand(in_channels) else None
        self.expand_bn = nn.BatchNorm2d(mid) if self.expand is not None else None
        self.dw = nn.Conv2d(mid, mid, block.kernel, block.stride, block.kernel // 2, groups=mid, bias=False)
        self.dw_bn = nn.BatchNorm2d(mid)
        reduced = block.se_width(in_channels)
        self.se = SqueezeExcite(mid, reduced) if reduced else None
        self.project = nn.Conv2d(mid, block.out, 1, groups=groups, bias=False)
        self.project_bn = nn.BatchNorm2d(block.out)
        self.act = activation(block.act)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand is not None:
            y = self.act(self.expand_bn(self.expand(y)))
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.act(self.dw_bn(self.dw(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y))
        return x + y if self.use_residual else y


class FusedInvertedResidual(nn.Module):
    """Fused block: kxk conv to the mid width, optional SE, 1x1 project (attribute names as InvertedResidual)."""

    def __init__(self, block: FusedIRBlock, in_channels: int):
        super().__init__()
        mid = block.mid_channels(in_channels)
        self.in_channels, self.mid, self.out = in_channels, mid, block.out
        self.use_residual = block.residual(in_channels)
        self.expand = nn.Conv2d(in_channels, mid, block.kernel, block.stride, block.kernel // 2, bias=False)
        self.expand_bn = nn.BatchNorm2d(mid)
        reduced = block.se_width(in_channels)
        self.se = SqueezeExcite(mid, reduced) if reduced else None
        self.project = nn.Conv2d(mid, block.out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(block.out)
        self.act = activation(block.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand_bn(self.expand(x)))
        if self.se is not None:
            y = self.se(y)
        y = self.project_bn(self.project(y))
        return x + y if self.use_residual else y


class DepthwiseSeparable(nn.Module):
    """MobileNetV1's block: depthwise kxk + BN + act, optional SE, pointwise 1x1 + BN + act (+ input with ``r1``)."""

    def __init__(self, block: DSBlock, in_channels: int):
        super().__init__()
        self.use_residual = block.residual(in_channels)
        self.dw = nn.Conv2d(in_channels, in_channels, block.kernel, block.stride, block.kernel // 2,
                            groups=in_channels, bias=False)
        self.dw_bn = nn.BatchNorm2d(in_channels)
        reduced = block.se_width(in_channels)
        self.se = SqueezeExcite(in_channels, reduced) if reduced else None
        self.pw = nn.Conv2d(in_channels, block.out, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(block.out)
        self.act = activation(block.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.dw_bn(self.dw(x)))
        if self.se is not None:
            y = self.se(y)
        y = self.act(self.pw_bn(self.pw(y)))
        return x + y if self.use_residual else y


class ConvBNAct(nn.Module):
    """kxk conv ('same' padding, no bias) + BN + activation, plus the input when `residual`."""

    def __init__(self, in_channels: int, out: int, kernel: int, stride: int, act: str, residual: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out)
        self.act = activation(act)
        self.use_residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        return x + y if self.use_residual else y
