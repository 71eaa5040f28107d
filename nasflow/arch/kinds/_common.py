"""Pieces several kinds share: the squeeze-excite fields and the residual rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ArchError
from ..fields import flag, optional_positive_int, unit_ratio

if TYPE_CHECKING:
    from ...edgetpu import Net
    from ..block import Block


def check_se(ratio: object, squeeze: object) -> tuple[float, int | None]:
    """Normalised (se ratio, explicit squeeze width); at most one of them may be set."""
    ratio = unit_ratio("se ratio", ratio)
    squeeze = optional_positive_int("squeeze channels", squeeze)
    if ratio and squeeze is not None:
        raise ArchError("give at most one of se<se ratio> or sq<squeeze channels>")
    return ratio, squeeze


def se_fields(ratio: float, squeeze: int | None) -> list[tuple[str, object]]:
    if ratio:
        return [("se", ratio)]
    if squeeze is not None:
        return [("sq", squeeze)]
    return []


def squeeze_width(in_channels: int, ratio: float, squeeze: int | None) -> int:
    """Width of the SE bottleneck: explicit ``sq``, else max(1, int(block input * ``se``)); 0 = no SE."""
    if squeeze is not None:
        return squeeze
    if ratio <= 0:
        return 0
    return max(1, int(in_channels * ratio))


def pinned_squeeze(width: int) -> dict[str, object]:
    """Record fields that fix an SE bottleneck at `width` whatever the block input (none without SE)."""
    return {"se": 0.0, "squeeze": width} if width else {}


def se_params(channels: int, reduced: int) -> int:
    """Two biased 1x1 convs: channels -> reduced -> channels."""
    return channels * reduced + reduced + reduced * channels + channels if reduced else 0


# ---------------------------------------------------------------- the residual (identity shortcut)
#
# Every convolutional kind has a ``shortcut`` field, written ``r0`` / ``r1``: whether the block adds
# its input to its output where the shape allows it (stride 1, in == out channels). Its default is
# the kind's own (`ir`, `fir`: on; `ds`, `conv`: off) and is never written, so tokens written
# before the field existed keep their form and hash.


def shortcut_default(cls: type) -> bool:
    """The kind's default ``shortcut`` (its dataclass field default: one place per kind)."""
    return cls.__dataclass_fields__["shortcut"].default  # type: ignore[attr-defined]


def shortcut_kwargs(fields: dict[str, object]) -> dict[str, object]:
    """Record keyword for a parsed ``r`` field; nothing when the token leaves it at the default."""
    return {"shortcut": fields["r"]} if "r" in fields else {}


def shortcut_fields(block: Block) -> list[tuple[str, object]]:
    """``[("r", value)]`` when the block's shortcut differs from its kind's default, else nothing."""
    return [] if block.shortcut == shortcut_default(type(block)) else [("r", block.shortcut)]  # type: ignore[attr-defined]


def takes_residual(block: Block, in_channels: int) -> bool:
    """Whether the block adds its input: it has the shortcut, stride 1 and in == out channels."""
    return bool(block.shortcut) and block.stride == 1 and in_channels == block.out  # type: ignore[attr-defined]


def join_branch(net: Net, branch: Net, residual: bool, prefix: str) -> None:
    """Continue `net` with a block's `branch`, through the residual add when the block takes one."""
    if residual:
        net.add_residual(branch, name=f"{prefix}.add")
    else:
        net.extend(branch)


def normalise_conv_fields(block, check_width=None) -> None:
    """Check and normalise the fields every convolutional kind shares, in the order errors are
    reported: channels, kernel, stride, (the kind's width via `check_width`), squeeze-excite
    (where the kind has it), activation, residual. Records are frozen, so values are set once here."""
    from ..fields import activation, odd_kernel, positive_int

    set_ = object.__setattr__
    set_(block, "out", positive_int("channels", block.out))
    set_(block, "kernel", odd_kernel(block.kernel))
    set_(block, "stride", positive_int("stride", block.stride))
    if check_width is not None:
        check_width(block)
    if hasattr(block, "se"):
        se, squeeze = check_se(block.se, block.squeeze)
        set_(block, "se", se)
        set_(block, "squeeze", squeeze)
    set_(block, "act", activation(block.act))
    set_(block, "shortcut", flag("residual", block.shortcut))
