"""The width multiplier: every channel width of an architecture scaled by one factor.

MobileNet's baseline against which MorphNet measures itself. Channel counts round to a multiple
of `divisor` with MobileNet's rule (`make_divisible`: the nearest multiple, never below the
divisor nor more than 10 % below the scaled width); an explicit squeeze-excite width (`sq`)
rounds to the nearest whole channel instead (at least 1), since SE bottlenecks are small. Widths
given as ratios (an `ir` block's expansion `e`, SE's `se`) follow the scaled input on their own.
The same width always scales to the same width, so a skip or residual connection between equal
widths stays between equal widths. Torch-free.
"""

from __future__ import annotations

import dataclasses

from ..errors import ArchError
from .grammar import Arch
from .zoo import make_divisible

DEFAULT_DIVISOR = 8
_ROUNDED_WIDTHS = ("out", "mid")  # block fields that hold a channel count (None: derived from a ratio)


def scale_width(arch: Arch, alpha: float, divisor: int = DEFAULT_DIVISOR) -> Arch:
    """`arch` with every channel width multiplied by `alpha` and rounded (see the module docstring)."""
    if not alpha > 0:
        raise ArchError(f"width multiplier must be positive, got {alpha}")
    if divisor < 1:
        raise ArchError(f"divisor must be at least 1, got {divisor}")

    def width(value: int) -> int:
        return make_divisible(value * alpha, divisor)

    blocks = []
    for block in arch.blocks:
        changes = {name: width(getattr(block, name)) for name in _ROUNDED_WIDTHS if getattr(block, name, None) is not None}
        if getattr(block, "squeeze", None) is not None:
            changes["squeeze"] = max(1, round(block.squeeze * alpha))
        blocks.append(dataclasses.replace(block, **changes))
    return dataclasses.replace(
        arch,
        stem=width(arch.stem),
        blocks=tuple(blocks),
        head=width(arch.head) if arch.head is not None else None,
        head_fc=width(arch.head_fc) if arch.head_fc is not None else None,
    )
