"""Pieces several kinds share: the squeeze-excite fields and the residual rule."""

from __future__ import annotations

from ...errors import ArchError
from ..fields import optional_positive_int, unit_ratio


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


def se_params(channels: int, reduced: int) -> int:
    """Two biased 1x1 convs: channels -> reduced -> channels."""
    return channels * reduced + reduced + reduced * channels + channels if reduced else 0


def normalise_conv_fields(block, check_width=None) -> None:
    """Check and normalise the fields every convolutional kind shares, in the order errors are
    reported: channels, kernel, stride, (the kind's width via `check_width`), squeeze-excite,
    activation. Records are frozen, so values are set once here."""
    from ..fields import activation, odd_kernel, positive_int

    set_ = object.__setattr__
    set_(block, "out", positive_int("channels", block.out))
    set_(block, "kernel", odd_kernel(block.kernel))
    set_(block, "stride", positive_int("stride", block.stride))
    if check_width is not None:
        check_width(block)
    se, squeeze = check_se(block.se, block.squeeze)
    set_(block, "se", se)
    set_(block, "squeeze", squeeze)
    set_(block, "act", activation(block.act))
