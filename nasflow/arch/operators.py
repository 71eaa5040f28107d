"""The operators an architecture executes, as a latency LUT keys and times them (no torch until built).

``key`` is the canonical layer token followed by ``@<input channels>``::

    stem_c16_s1@3          3x3 stem conv + BN + act fed 3 channels
    ir_k5_e3_c24_s2@16     a block (its kind's ``lut_key``) fed 16 channels
    head_c64_n10@24        head (conv, pool, fc, classifier) to 10 classes, fed 24 channels
    null@3                 an identity model on the network's input: the runtime's fixed cost
                           of one call, which every other entry also contains once

The ``null`` entry is not an operator of any architecture (`arch_operators` never lists it); it
lets a predictor take the per-call overhead out of each entry and count it once per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .block import Block, BlockShape
from .counting import block_shapes, head_activations, head_macs, head_size, image_hw, stem_shape
from .grammar import Arch

LutKey = tuple[str, str]
"""(op_key, input shape as ``"1x16x8x8"``)."""


def shape_str(shape: Sequence[int]) -> str:
    """Registry text form of a shape: ``(1, 16, 8, 8)`` -> ``"1x16x8x8"``."""
    return "x".join(str(int(n)) for n in shape)


@dataclass(frozen=True)
class Operator:
    """One distinct operator at one input shape (batch first)."""

    key: str
    input_shape: tuple[int, ...]
    kind: str  # "stem", "head", "null" or the block kind
    family: str  # "stem", "head", "null", "dense" or "depthwise" (see Block.lut_family)
    macs: int  # multiply-accumulates for one input
    activations: int  # elements of the tensors it reads and writes, intermediates included, one input
    builder: Callable[[], Any] = field(repr=False, compare=False)

    @property
    def shape(self) -> str:
        """Input shape as the registry writes it (``"1x16x8x8"``)."""
        return shape_str(self.input_shape)

    @property
    def lut_key(self) -> LutKey:
        return (self.key, self.shape)

    def module(self):
        """A freshly initialised torch module computing just this operator."""
        return self.builder()


def stem_key(arch: Arch, in_channels: int) -> str:
    return f"{arch.stem_token()}@{int(in_channels)}"


def head_key(arch: Arch, num_classes: int, in_channels: int) -> str:
    return f"{arch.head_token()}_n{int(num_classes)}@{int(in_channels)}"


def null_key(in_channels: int) -> str:
    return f"null@{in_channels}"


def _build_stem(arch: Arch, in_channels: int):
    from .builder import stem_module  # noqa: PLC0415

    return stem_module(arch, in_channels)


def _build_head(arch: Arch, channels: int, num_classes: int):
    from .builder import head_module  # noqa: PLC0415

    return head_module(arch, channels, num_classes)


def _identity():
    from torch import nn  # noqa: PLC0415

    return nn.Identity()


def stem_operator(arch: Arch, in_channels: int, image_size, batch_size: int = 1) -> Operator:
    shape = stem_shape(arch, in_channels, image_size)
    return Operator(
        key=stem_key(arch, in_channels),
        input_shape=(batch_size, in_channels, *shape.in_size),
        kind="stem",
        family="stem",
        macs=arch.stem_block.macs(shape),
        activations=arch.stem_block.activations(shape),
        builder=lambda: _build_stem(arch, in_channels),
    )


def block_operator(block: Block, shape: BlockShape, batch_size: int = 1) -> Operator | None:
    """The block's operator at its input shape; None for blocks that execute nothing (skip)."""
    key = block.lut_key(shape.in_channels)
    if key is None:
        return None
    cin = shape.in_channels
    return Operator(
        key=key,
        input_shape=(batch_size, cin, *shape.in_size),
        kind=block.kind,
        family=block.lut_family(cin),
        macs=block.macs(shape),
        activations=block.activations(shape),
        builder=lambda: block.module(cin),
    )


def head_operator(arch: Arch, channels: int, num_classes: int, size, batch_size: int = 1) -> Operator:
    size = image_hw(size)
    return Operator(
        key=head_key(arch, num_classes, channels),
        input_shape=(batch_size, channels, *size),
        kind="head",
        family="head",
        macs=head_macs(arch, channels, num_classes, size),
        activations=head_activations(arch, channels, num_classes, size),
        builder=lambda: _build_head(arch, channels, num_classes),
    )


def null_operator(in_channels: int, image_size, batch_size: int = 1) -> Operator:
    """The identity model on the network's input: what one call costs the runtime by itself."""
    return Operator(
        key=null_key(in_channels),
        input_shape=(batch_size, in_channels, *image_hw(image_size)),
        kind="null",
        family="null",
        macs=0,
        activations=0,
        builder=_identity,
    )


def arch_operators(arch: Arch, in_channels: int, num_classes: int, image_size, batch_size: int = 1) -> list[Operator]:
    """The operators an architecture executes, in order (skip layers contribute nothing)."""
    ops = [stem_operator(arch, in_channels, image_size, batch_size)]
    for block, shape in zip(arch.blocks, block_shapes(arch, in_channels, image_size)):
        op = block_operator(block, shape, batch_size)
        if op is not None:
            ops.append(op)
    ops.append(head_operator(arch, arch.last_channels, num_classes, head_size(arch, in_channels, image_size), batch_size))
    return ops


def arch_lut_keys(arch: Arch, in_channels: int, num_classes: int, image_size, batch_size: int = 1) -> list[LutKey]:
    """LUT keys ``(op_key, "1x16x8x8")`` of an architecture's operators, in order."""
    return [op.lut_key for op in arch_operators(arch, in_channels, num_classes, image_size, batch_size)]
