"""Shapes, multiply-accumulates and parameters of an architecture, computed without building it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .block import Block, BlockShape, Size, same_out
from .grammar import STEM_KERNEL, Arch, validate_arch


def image_hw(image_size: int | Sequence[int]) -> Size:
    """``32`` or ``(h, w)`` -> ``(h, w)``."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def stem_shape(arch: Arch, in_channels: int, image_size: int | Sequence[int]) -> BlockShape:
    size = image_hw(image_size)
    return BlockShape(in_channels, size, same_out(size, STEM_KERNEL, arch.stem_stride))


def block_shapes(arch: Arch, in_channels: int, image_size: int | Sequence[int]) -> list[BlockShape]:
    """Shape seen by every block, in order (image_size may be an int or (h, w))."""
    size = stem_shape(arch, in_channels, image_size).out_size
    channels, shapes = arch.stem, []
    for block in arch.blocks:
        out_size = block.out_size(size)
        shapes.append(BlockShape(channels, size, out_size))
        channels, size = block.out, out_size
    return shapes


def head_size(arch: Arch, in_channels: int, image_size: int | Sequence[int]) -> Size:
    """Spatial size of the map the head receives."""
    shapes = block_shapes(arch, in_channels, image_size)
    return shapes[-1].out_size if shapes else stem_shape(arch, in_channels, image_size).out_size


def head_macs(arch: Arch, channels: int, num_classes: int, size: Size) -> int:
    """1x1 conv on the map, then (after pooling) the optional fc and the classifier."""
    macs = size[0] * size[1] * channels * arch.head if arch.head else 0
    pooled = arch.head or channels
    if arch.head_fc:
        macs += pooled * arch.head_fc
    return macs + (arch.head_fc or pooled) * num_classes


def head_params(arch: Arch, channels: int, num_classes: int) -> int:
    params = channels * arch.head + 2 * arch.head if arch.head else 0  # conv + BN (no bias)
    pooled = arch.head or channels
    if arch.head_fc:
        params += pooled * arch.head_fc + arch.head_fc  # biased, no BN (MobileNetV3's "NBN")
    features = arch.head_fc or pooled
    return params + features * num_classes + num_classes


def head_activations(arch: Arch, channels: int, num_classes: int, size: Size) -> int:
    pixels = size[0] * size[1]
    elements = pixels * channels + (pixels * arch.head if arch.head else 0) + (arch.head or channels)
    return elements + (arch.head_fc or 0) + num_classes


def block_costs(arch: Arch, in_channels: int, image_size: int | Sequence[int]) -> Iterable[tuple[Block, BlockShape]]:
    return zip(arch.blocks, block_shapes(arch, in_channels, image_size))


def count_macs(arch: Arch, in_channels: int, num_classes: int, image_size: int | Sequence[int]) -> int:
    """Multiply-accumulates of all conv and linear layers for one image (biases, BN, adds excluded)."""
    macs = arch.stem_block.macs(stem_shape(arch, in_channels, image_size))
    macs += sum(block.macs(shape) for block, shape in block_costs(arch, in_channels, image_size))
    return macs + head_macs(arch, arch.last_channels, num_classes, head_size(arch, in_channels, image_size))


def count_arch_params(arch: Arch, in_channels: int, num_classes: int, batchnorm: bool = True) -> int:
    """Analytic parameter count of build_model(arch, ...) without building it.

    With ``batchnorm=False`` the BatchNorm scales and shifts are left out: the convention of
    published counts (BN is folded away at inference), used to compare with papers.
    """
    params = arch.stem_block.params(in_channels)
    norm = arch.stem_block.norm_params(in_channels)
    channels = arch.stem
    for block in arch.blocks:
        params += block.params(channels)
        norm += block.norm_params(channels)
        channels = block.out
    params += head_params(arch, channels, num_classes)
    norm += 2 * arch.head if arch.head else 0
    return params if batchnorm else params - norm


def count_params(model: Any) -> int:
    """Parameters of a torch module (trainable or not; BN running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def mid_channels(block: Block, in_channels: int) -> int:
    """Expanded channel count of an ``ir``/``fir`` block fed `in_channels` channels."""
    return block.mid_channels(in_channels)  # type: ignore[attr-defined]


def se_channels(block: Block, in_channels: int) -> int:
    """Width of a block's squeeze-excite bottleneck (0 when it has none)."""
    width = getattr(block, "se_width", None)
    return width(in_channels) if width else 0


def layer_table(arch: Arch, in_channels: int, num_classes: int, image_size: int | Sequence[int]) -> list[dict[str, Any]]:
    """One row per layer (stem, blocks, head): token, output shape (c, h, w), params and MACs.

    Raises ArchError when a block cannot take its input (see `validate_arch`).
    """
    validate_arch(arch, in_channels)
    stem = stem_shape(arch, in_channels, image_size)
    rows = [_row(0, "stem", arch.stem_token(), arch.stem, stem.out_size,
                 arch.stem_block.params(in_channels), arch.stem_block.macs(stem))]
    for index, (block, shape) in enumerate(block_costs(arch, in_channels, image_size)):
        rows.append(_row(index + 1, block.kind, block.token(), block.out, shape.out_size,
                         block.params(shape.in_channels), block.macs(shape)))
    size = head_size(arch, in_channels, image_size)
    rows.append(_row(len(arch.blocks) + 1, "head", arch.head_token(), num_classes, (1, 1),
                     head_params(arch, arch.last_channels, num_classes),
                     head_macs(arch, arch.last_channels, num_classes, size)))
    return rows


def _row(position: int, kind: str, token: str, channels: int, size: Size, params: int, macs: int) -> dict[str, Any]:
    return {"position": position, "kind": kind, "token": token, "out_shape": [channels, *size],
            "params": params, "macs": macs}
