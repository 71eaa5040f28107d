"""`conv`: a regular kxk convolution + BN + activation (MnasNet's and FBNetV2's plain conv op; also the stem)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..block import Block, BlockShape, Size, same_out
from ._common import join_branch, normalise_conv_fields, shortcut_fields, shortcut_kwargs, takes_residual

if TYPE_CHECKING:
    from torch import nn

    from ...edgetpu import Net


@dataclass(frozen=True)
class ConvBlock(Block):
    """kxk conv (stride s, 'same' padding, no bias) + BN + act; no residual unless ``r1`` asks for
    one (added after the activation when stride is 1 and in == out channels)."""

    kind: ClassVar[str] = "conv"
    ALLOWED: ClassVar[tuple[str, ...]] = ("k", "c", "s", "a", "r")
    REQUIRED: ClassVar[tuple[str, ...]] = ("k", "c", "s")

    kernel: int = 3
    out: int = 0
    stride: int = 1
    act: str = "relu"
    shortcut: bool = False

    def __post_init__(self) -> None:
        normalise_conv_fields(self)

    @classmethod
    def from_fields(cls, fields: dict[str, object]) -> ConvBlock:
        return cls(
            kernel=fields["k"],  # type: ignore[arg-type]
            out=fields["c"],  # type: ignore[arg-type]
            stride=fields["s"],  # type: ignore[arg-type]
            act=fields.get("a", "relu"),  # type: ignore[arg-type]
            **shortcut_kwargs(fields),  # type: ignore[arg-type]
        )

    def fields(self) -> list[tuple[str, object]]:
        items: list[tuple[str, object]] = [("k", self.kernel), ("c", self.out), ("s", self.stride)]
        if self.act != "relu":
            items.append(("a", self.act))
        return items + shortcut_fields(self)

    def residual(self, in_channels: int) -> bool:
        return takes_residual(self, in_channels)

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

        return ConvBNAct(in_channels, self.out, self.kernel, self.stride, self.act, self.residual(in_channels))

    def edgetpu(self, net: Net, prefix: str) -> None:
        branch = net.fork()
        branch.conv(self.out, self.kernel, self.stride, act=self.act, name=f"{prefix}.conv")
        join_branch(net, branch, self.residual(net.c), prefix)

    output_gate: ClassVar[str | None] = "bn"
