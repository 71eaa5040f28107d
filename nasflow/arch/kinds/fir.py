"""`fir`: the fused inverted residual (MobileNetEdgeTPU, EfficientNet-EdgeTPU): regular kxk conv, optional SE, 1x1 project."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from ..block import Block, BlockShape, PrunableGroup, Size, same_out
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
from .ir import check_width, expanded_width, width_field

if TYPE_CHECKING:
    from torch import nn

    from ...edgetpu import Net


@dataclass(frozen=True)
class FusedIRBlock(Block):
    """A regular kxk conv (stride s) from the input to the expanded width + BN + act, optional SE,
    then the linear 1x1 projection + BN; residual add when stride is 1 and in == out channels,
    unless ``r0``.

    The expansion and the depthwise conv of ``ir`` are fused into one dense conv, which fills a
    matrix unit far better than a depthwise one. The projection is always there, also at ``e1``.
    """

    kind: ClassVar[str] = "fir"
    ALLOWED: ClassVar[tuple[str, ...]] = ("k", "e", "m", "c", "s", "se", "sq", "a", "r")
    REQUIRED: ClassVar[tuple[str, ...]] = ("k", "c", "s")
    ONE_OF: ClassVar = ((("e", "m"), True), (("se", "sq"), False))

    kernel: int = 3
    expansion: float = 1.0
    mid: int | None = None
    out: int = 0
    stride: int = 1
    se: float = 0.0
    act: str = "relu"
    squeeze: int | None = None
    shortcut: bool = True

    def __post_init__(self) -> None:
        normalise_conv_fields(self, check_width)

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> FusedIRBlock:
        return cls(
            kernel=fields["k"],  # type: ignore[arg-type]
            expansion=fields.get("e", 1.0),  # type: ignore[arg-type]
            mid=fields.get("m"),  # type: ignore[arg-type]
            out=fields["c"],  # type: ignore[arg-type]
            stride=fields["s"],  # type: ignore[arg-type]
            se=fields.get("se", 0.0),  # type: ignore[arg-type]
            act=fields.get("a", "relu"),  # type: ignore[arg-type]
            squeeze=fields.get("sq"),  # type: ignore[arg-type]
            **shortcut_kwargs(fields),  # type: ignore[arg-type]
        )

    def fields(self) -> list[tuple[str, object]]:
        items = [("k", self.kernel), width_field(self), ("c", self.out), ("s", self.stride)]
        items += se_fields(self.se, self.squeeze)
        if self.act != "relu":
            items.append(("a", self.act))
        return items + shortcut_fields(self)

    def mid_channels(self, in_channels: int) -> int:
        return expanded_width(self, in_channels)

    def se_width(self, in_channels: int) -> int:
        return squeeze_width(in_channels, self.se, self.squeeze)

    def residual(self, in_channels: int) -> bool:
        return takes_residual(self, in_channels)

    def out_size(self, size: Size) -> Size:
        return same_out(size, self.kernel, self.stride)

    def macs(self, shape: BlockShape) -> int:
        cin, mid = shape.in_channels, self.mid_channels(shape.in_channels)
        macs = shape.out_pixels * cin * mid * self.kernel * self.kernel
        macs += 2 * mid * self.se_width(cin)
        return macs + shape.out_pixels * mid * self.out

    def params(self, in_channels: int) -> int:
        cin, mid = in_channels, self.mid_channels(in_channels)
        params = cin * mid * self.kernel * self.kernel + 2 * mid
        params += se_params(mid, self.se_width(cin))
        return params + mid * self.out + 2 * self.out

    def norm_params(self, in_channels: int) -> int:
        return 2 * self.mid_channels(in_channels) + 2 * self.out

    def activations(self, shape: BlockShape) -> int:
        mid = self.mid_channels(shape.in_channels)
        return shape.in_pixels * shape.in_channels + shape.out_pixels * (mid + self.out)

    def module(self, in_channels: int) -> nn.Module:
        from ..layers import FusedInvertedResidual  # noqa: PLC0415

        return FusedInvertedResidual(self, in_channels)

    def edgetpu(self, net: Net, prefix: str) -> None:
        cin = net.c
        branch = net.fork()
        branch.conv(self.mid_channels(cin), self.kernel, self.stride, act=self.act, name=f"{prefix}.expand")
        reduced = self.se_width(cin)
        if reduced:
            branch.squeeze_excite(reduced, gate="hsigmoid", name=f"{prefix}.se")
        branch.conv(self.out, 1, act=None, name=f"{prefix}.project")
        join_branch(net, branch, self.residual(cin), prefix)

    def prunable(self, in_channels: int) -> tuple[PrunableGroup, ...]:
        mid = self.mid_channels(in_channels)
        return (PrunableGroup("mid", mid, "expand_bn", self.residual(in_channels)),)

    def with_width(self, field: str, width: int) -> FusedIRBlock:
        if field != "mid":
            return super().with_width(field, width)  # type: ignore[return-value]
        return replace(self, mid=width)

    output_gate: ClassVar[str | None] = "project_bn"

    def pinned(self, in_channels: int) -> FusedIRBlock:
        return replace(self, mid=self.mid_channels(in_channels), **pinned_squeeze(self.se_width(in_channels)))
