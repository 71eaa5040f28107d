"""`ds`: the depthwise-separable conv of MobileNetV1: depthwise kxk + BN + act, optional SE, 1x1 + BN + act."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from ..block import Block, BlockShape, Size, same_out
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


@dataclass(frozen=True)
class DSBlock(Block):
    """Depthwise kxk (stride s) on the input channels, optional SE, pointwise 1x1 to ``c``; both activated.

    No expansion, and no residual unless ``r1`` asks for one (added when stride is 1 and in == out
    channels: MnasNet's "identity residual" skip choice). A separable conv whose pointwise conv is
    linear (MnasNet's ``SepConv``, MobileNetV2's first block) is an ``ir`` block with ``e1``.
    """

    kind: ClassVar[str] = "ds"
    ALLOWED: ClassVar[tuple[str, ...]] = ("k", "c", "s", "se", "sq", "a", "r")
    REQUIRED: ClassVar[tuple[str, ...]] = ("k", "c", "s")
    ONE_OF: ClassVar = ((("se", "sq"), False),)

    kernel: int = 3
    out: int = 0
    stride: int = 1
    se: float = 0.0
    act: str = "relu"
    squeeze: int | None = None
    shortcut: bool = False

    def __post_init__(self) -> None:
        normalise_conv_fields(self)

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> DSBlock:
        return cls(
            kernel=fields["k"],  # type: ignore[arg-type]
            out=fields["c"],  # type: ignore[arg-type]
            stride=fields["s"],  # type: ignore[arg-type]
            se=fields.get("se", 0.0),  # type: ignore[arg-type]
            act=fields.get("a", "relu"),  # type: ignore[arg-type]
            squeeze=fields.get("sq"),  # type: ignore[arg-type]
            **shortcut_kwargs(fields),  # type: ignore[arg-type]
        )

    def fields(self) -> list[tuple[str, object]]:
        items = [("k", self.kernel), ("c", self.out), ("s", self.stride), *se_fields(self.se, self.squeeze)]
        if self.act != "relu":
            items.append(("a", self.act))
        return items + shortcut_fields(self)

    def se_width(self, in_channels: int) -> int:
        return squeeze_width(in_channels, self.se, self.squeeze)

    def residual(self, in_channels: int) -> bool:
        return takes_residual(self, in_channels)

    def out_size(self, size: Size) -> Size:
        return same_out(size, self.kernel, self.stride)

    def macs(self, shape: BlockShape) -> int:
        cin = shape.in_channels
        macs = shape.out_pixels * cin * self.kernel * self.kernel + 2 * cin * self.se_width(cin)
        return macs + shape.out_pixels * cin * self.out

    def params(self, in_channels: int) -> int:
        cin = in_channels
        params = cin * self.kernel * self.kernel + 2 * cin + se_params(cin, self.se_width(cin))
        return params + cin * self.out + 2 * self.out

    def norm_params(self, in_channels: int) -> int:
        return 2 * in_channels + 2 * self.out

    def activations(self, shape: BlockShape) -> int:
        cin = shape.in_channels
        return shape.in_pixels * cin + shape.out_pixels * (cin + self.out)

    def lut_family(self, in_channels: int) -> str:
        return "depthwise"

    def module(self, in_channels: int) -> nn.Module:
        from ..layers import DepthwiseSeparable  # noqa: PLC0415

        return DepthwiseSeparable(self, in_channels)

    def edgetpu(self, net: Net, prefix: str) -> None:
        cin = net.c
        reduced = self.se_width(cin)
        branch = net.fork()
        branch.depthwise(self.kernel, self.stride, act=self.act, name=f"{prefix}.dw")
        if reduced:
            branch.squeeze_excite(reduced, gate="hsigmoid", name=f"{prefix}.se")
        branch.conv(self.out, 1, act=self.act, name=f"{prefix}.pw")
        join_branch(net, branch, self.residual(cin), prefix)

    # --- resizing

    output_gate: ClassVar[str | None] = "pw_bn"

    def input_gates(self, in_channels: int) -> tuple[str, ...]:
        return ("dw_bn",)

    def pinned(self, in_channels: int) -> DSBlock:
        # The depthwise channels (and the SE on them) are the input's; only the SE bottleneck is fixed.
        return replace(self, **pinned_squeeze(self.se_width(in_channels)))
