"""The table of block kinds: the one place a kind is registered (its module holds everything else)."""

from __future__ import annotations

from ...errors import ArchError
from ..block import Block
from .conv import ConvBlock
from .ds import DSBlock
from .fir import FusedIRBlock
from .ir import IRBlock
from .skip import SkipBlock

KINDS: dict[str, type[Block]] = {cls.kind: cls for cls in (IRBlock, FusedIRBlock, DSBlock, ConvBlock, SkipBlock)}
"""Block kind name (the first word of its token) -> record class."""


def kind_class(name: object) -> type[Block]:
    """The record class of a kind; ArchError listing the kinds for an unknown name."""
    try:
        return KINDS[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ArchError(f"block kind must be one of {tuple(KINDS)}, got {name!r}") from None


__all__ = ["KINDS", "ConvBlock", "DSBlock", "FusedIRBlock", "IRBlock", "SkipBlock", "kind_class"]
