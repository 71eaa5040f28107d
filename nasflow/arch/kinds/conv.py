"""`conv`: a regular kxk convolution + BN + activation (MnasNet's and FBNetV2's plain conv op; also the stem)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..block import Block, BlockShape, Size, same_out
from ..fields import activation, odd_kernel, positive_int

if TYPE_CHECKING:
    from torch import nn

    from ...edgetpu import Net


@dataclass(frozen=True)
class ConvBlock(Block):
    """kxk conv (stride s, 'same' padding, no bias) + BN + act; no residual."""

    kind: ClassVar[str] = "conv"
    ALLOWED: ClassVar[tuple[str, ...]] = ("k", "c", "s", "a")
    REQUIRED: ClassVar[tuple[str, ...]] = ("k", "c", "s")

    kernel: int = 3
    out: int = 0
    stride: int = 1
    act: str = "relu"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "out", positive_int("channels", self.out))
        set_(self, "kernel", odd_kernel(self.kernel))
        set_(self, "stride", positive_int("stride", self.stride))
        set_(self, "act", activation(self.act))

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> ConvBlock:
        return cls(kernel=fields["k"], out=fields["c"], stride=fields["s"], act=fields.get("a", "relu"))  # type: ignore[arg-type]

    def fields(self) -> list[tuple[str, object]]:
        items: list[tuple[str, object]] = [("k", self.kernel), ("c", self.out), ("s", self.stride)]
        if self.act != "relu":
            items.append(("a", self.act))
        return items

    def out_size(self, size: Size) -> Size:
        return same_out(size, self.kernel, self.stride)

    def macs(self, shape: BlockShape) -> int:
        return shape.out_pixels * shape.in_channels * self.out * self.kernel * self.kernel

    def params(self, in_channels: int) -> int:
        return in_channels * self.out * self.kernel * self.kernel + 2 * self.out

    def norm_params(self, in_channels: int) -> int:
        return 2 * self.out

    def activations(self, shape: BlockShape) -> int:
        return shape.in_pixels * shape.in_channels + shape.out_pixels * self.out

    def module(self, in_channels: int) -> nn.Module:
        from ..layers import ConvBNAct  # noqa: PLC0415

        return ConvBNAct(in_channels, self.out, self.kernel, self.stride, self.act)

    def edgetpu(self, net: Net, prefix: str) -> None:
        net.conv(self.out, self.kernel, self.stride, act=self.act, name=f"{prefix}.conv")
