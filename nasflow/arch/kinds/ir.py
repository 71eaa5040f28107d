"""`ir`: the inverted residual (MobileNetV2), with optional SE and FBNet's grouped 1x1 convs + channel shuffle."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from ..block import Block, BlockShape, PrunableGroup, Size, check_groups, same_out
from ..fields import positive_float, positive_int
from ._common import (
    join_branch,
    normalise_conv_fields,
    pinned_squeeze,
    se_fields,
    se_params,
    shortcut_fields,
    shortcut_kwargs,
    squeeze_width,
    takes_residual,
)

if TYPE_CHECKING:
    from torch import nn

    from ...edgetpu import Net


def check_width(block: Block) -> None:
    """Normalise ``e``/``m`` of a record with an expansion: an explicit mid pins the ratio to 1."""
    set_ = object.__setattr__  # frozen: normalise once here so equal strings mean equal records
    if block.mid is not None:  # type: ignore[attr-defined]
        set_(block, "mid", positive_int("mid channels", block.mid))  # type: ignore[attr-defined]
        set_(block, "expansion", 1.0)
    else:
        set_(block, "expansion", positive_float("expansion", block.expansion))  # type: ignore[attr-defined]


def expanded_width(block: Block, in_channels: int) -> int:
    """``m``, else max(1, round(in * ``e``))."""
    if block.mid is not None:  # type: ignore[attr-defined]
        return block.mid  # type: ignore[attr-defined]
    return max(1, round(in_channels * block.expansion))  # type: ignore[attr-defined]


def width_field(block: Block) -> tuple[str, object]:
    return ("m", block.mid) if block.mid is not None else ("e", block.expansion)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class IRBlock(Block):
    """1x1 expand (left out when mid == in and groups == 1), depthwise kxk, optional SE, linear 1x1 project.

    With ``groups`` > 1 both 1x1 convs are grouped and the channels are shuffled between the
    expand conv and the depthwise conv (ShuffleNet, FBNet's ``k3_e1_g2``); the expand conv is
    then always present. Residual add when stride is 1 and in == out channels, unless ``r0``.
    """

    kind: ClassVar[str] = "ir"
    ALLOWED: ClassVar[tuple[str, ...]] = ("k", "e", "m", "c", "s", "g", "se", "sq", "a", "r")
    REQUIRED: ClassVar[tuple[str, ...]] = ("k", "c", "s")
    ONE_OF: ClassVar = ((("e", "m"), True), (("se", "sq"), False))

    kernel: int = 3
    expansion: float = 1.0
    mid: int | None = None
    out: int = 0
    stride: int = 1
    se: float = 0.0
    act: str = "relu"
    groups: int = 1
    squeeze: int | None = None
    shortcut: bool = True

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        normalise_conv_fields(self, check_width)
        set_(self, "groups", positive_int("groups", self.groups))
        if self.groups > 1:
            widths = [("output channels", self.out)] + ([("mid channels", self.mid)] if self.mid else [])
            check_groups("grouped ir", self.groups, widths)

    # --- string form

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> IRBlock:
        return cls(
            kernel=fields["k"],  # type: ignore[arg-type]
            expansion=fields.get("e", 1.0),  # type: ignore[arg-type]
            mid=fields.get("m"),  # type: ignore[arg-type]
            out=fields["c"],  # type: ignore[arg-type]
            stride=fields["s"],  # type: ignore[arg-type]
            se=fields.get("se", 0.0),  # type: ignore[arg-type]
            act=fields.get("a", "relu"),  # type: ignore[arg-type]
            groups=fields.get("g", 1),  # type: ignore[arg-type]
            squeeze=fields.get("sq"),  # type: ignore[arg-type]
            **shortcut_kwargs(fields),  # type: ignore[arg-type]
        )

    def fields(self) -> list[tuple[str, object]]:
        items = [("k", self.kernel), width_field(self), ("c", self.out), ("s", self.stride)]
        if self.groups > 1:
            items.append(("g", self.groups))
        items += se_fields(self.se, self.squeeze)
        if self.act != "relu":
            items.append(("a", self.act))
        return items + shortcut_fields(self)

    # --- structure

    def mid_channels(self, in_channels: int) -> int:
        return expanded_width(self, in_channels)

    def has_expand(self, in_channels: int) -> bool:
        return self.groups > 1 or self.mid_channels(in_channels) != in_channels

    def se_width(self, in_channels: int) -> int:
        return squeeze_width(in_channels, self.se, self.squeeze)

    def residual(self, in_channels: int) -> bool:
        return takes_residual(self, in_channels)

    def check_input(self, in_channels: int) -> None:
        if self.groups > 1:
            widths = [("input channels", in_channels), ("mid channels", self.mid_channels(in_channels))]
            check_groups("grouped ir", self.groups, widths)

    def out_size(self, size: Size) -> Size:
        return same_out(size, self.kernel, self.stride)

    # --- cost

    def macs(self, shape: BlockShape) -> int:
        cin, mid, g = shape.in_channels, self.mid_channels(shape.in_channels), self.groups
        macs = shape.in_pixels * cin * mid // g if self.has_expand(cin) else 0
        macs += shape.out_pixels * mid * self.kernel * self.kernel
        macs += 2 * mid * self.se_width(cin)  # SE convs run on the pooled 1x1 map
        return macs + shape.out_pixels * mid * self.out // g

    def params(self, in_channels: int) -> int:
        cin, mid, g = in_channels, self.mid_channels(in_channels), self.groups
        params = cin * mid // g + 2 * mid if self.has_expand(cin) else 0
        params += mid * self.kernel * self.kernel + 2 * mid
        params += se_params(mid, self.se_width(cin))
        return params + mid * self.out // g + 2 * self.out

    def norm_params(self, in_channels: int) -> int:
        mid = self.mid_channels(in_channels)
        return (2 * mid if self.has_expand(in_channels) else 0) + 2 * mid + 2 * self.out

    def activations(self, shape: BlockShape) -> int:
        cin, mid = shape.in_channels, self.mid_channels(shape.in_channels)
        expand = shape.in_pixels * mid if self.has_expand(cin) else 0
        return shape.in_pixels * cin + expand + shape.out_pixels * (mid + self.out)

    def lut_family(self, in_channels: int) -> str:
        return "dense" if self.has_expand(in_channels) else "depthwise"

    # --- models

    def module(self, in_channels: int) -> nn.Module:
        from ..layers import InvertedResidual  # noqa: PLC0415

        return InvertedResidual(self, in_channels)

    def edgetpu(self, net: Net, prefix: str) -> None:
        cin = net.c
        mid = self.mid_channels(cin)
        branch = net.fork()
        if self.has_expand(cin):
            branch.conv(mid, 1, groups=self.groups, act=self.act, name=f"{prefix}.expand")
        if self.groups > 1:
            branch.channel_shuffle(name=f"{prefix}.shuffle")
        branch.depthwise(self.kernel, self.stride, act=self.act, name=f"{prefix}.dw")
        reduced = self.se_width(cin)
        if reduced:
            branch.squeeze_excite(reduced, gate="hsigmoid", name=f"{prefix}.se")
        branch.conv(self.out, 1, groups=self.groups, act=None, name=f"{prefix}.project")
        join_branch(net, branch, self.residual(cin), prefix)

    # --- pruning

    def prunable(self, in_channels: int) -> tuple[PrunableGroup, ...]:
        # Grouped convs tie each mid channel to its group and the shuffle's order: not prunable here.
        if self.groups > 1 or not self.has_expand(in_channels):
            return ()
        mid = self.mid_channels(in_channels)
        return (PrunableGroup("mid", mid, "dw_bn", self.residual(in_channels), avoid=(in_channels,)),)

    def with_width(self, field: str, width: int) -> IRBlock:
        if field != "mid":
            return super().with_width(field, width)  # type: ignore[return-value]
        return replace(self, mid=width)

    output_gate: ClassVar[str | None] = "project_bn"

    def resizable_io(self) -> bool:
        return self.groups == 1

    def input_gates(self, in_channels: int) -> tuple[str, ...]:
        return () if self.has_expand(in_channels) else ("dw_bn",)

    def pinned(self, in_channels: int) -> IRBlock:
        # Without an expand conv the depthwise channels are the input's, and follow it (``e1`` stays).
        if self.has_expand(in_channels):
            widths = {"mid": self.mid_channels(in_channels)}
        else:
            widths = {"mid": None, "expansion": 1.0}
        return replace(self, **widths, **pinned_squeeze(self.se_width(in_channels)))
