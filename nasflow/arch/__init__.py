"""Architectures: the block kinds, the string grammar, counting, the zoo, and (lazily) the torch builder.

Importing this package does not import torch: ``build_model``, ``ArchNet`` and the layer
modules load `nasflow.arch.builder` / `nasflow.arch.layers` on first use.
"""

from __future__ import annotations

from typing import Any

from .block import Block, BlockShape, PrunableGroup
from .counting import block_shapes, count_arch_params, count_macs, count_params, layer_table, mid_channels, se_channels
from .fields import ACTIVATIONS
from .grammar import Arch, arch_hash, format_arch, format_block, parse_arch, validate_arch
from .kinds import KINDS, ConvBlock, DSBlock, FusedIRBlock, IRBlock, SkipBlock, kind_class
from .zoo import ZOO, resolve_arch, zoo_arch, zoo_names

_TORCH = {
    "ArchNet": "builder",
    "build_model": "builder",
    "InvertedResidual": "layers",
    "FusedInvertedResidual": "layers",
    "DepthwiseSeparable": "layers",
    "ConvBNAct": "layers",
    "SqueezeExcite": "layers",
    "ChannelShuffle": "layers",
    "HardSwish": "layers",
    "hard_sigmoid": "layers",
}


def __getattr__(name: str) -> Any:
    if name in _TORCH:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS",
    "KINDS",
    "ZOO",
    "Arch",
    "Block",
    "BlockShape",
    "ConvBlock",
    "DSBlock",
    "FusedIRBlock",
    "IRBlock",
    "PrunableGroup",
    "SkipBlock",
    "arch_hash",
    "block_shapes",
    "count_arch_params",
    "count_macs",
    "count_params",
    "format_arch",
    "format_block",
    "kind_class",
    "layer_table",
    "mid_channels",
    "parse_arch",
    "resolve_arch",
    "se_channels",
    "validate_arch",
    "zoo_arch",
    "zoo_names",
    *_TORCH,
]
