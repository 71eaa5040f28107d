"""Compatibility module: the names `nasflow.space` exported before the `arch` package and `spaces` split.

New code imports from `nasflow.arch` (grammar, kinds, counting, zoo; torch-free),
`nasflow.arch.builder` / `nasflow.arch.layers` (torch) and `nasflow.spaces`.
"""

from __future__ import annotations

from .arch import (
    ACTIVATIONS,
    Arch,
    Block,
    BlockShape,
    arch_hash,
    block_shapes,
    count_arch_params,
    count_macs,
    count_params,
    format_arch,
    mid_channels,
    parse_arch,
    se_channels,
    validate_arch,
)
from .arch.builder import ArchNet, build_model
from .arch.grammar import format_block as _format_block
from .arch.layers import HardSwish, InvertedResidual, SqueezeExcite, hard_sigmoid
from .spaces.layerwise import LayerwiseSpace

__all__ = [
    "ACTIVATIONS",
    "Arch",
    "ArchNet",
    "Block",
    "BlockShape",
    "HardSwish",
    "InvertedResidual",
    "LayerwiseSpace",
    "SqueezeExcite",
    "_format_block",
    "arch_hash",
    "block_shapes",
    "build_model",
    "count_arch_params",
    "count_macs",
    "count_params",
    "format_arch",
    "hard_sigmoid",
    "mid_channels",
    "parse_arch",
    "se_channels",
    "validate_arch",
]
